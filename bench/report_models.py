"""The sections of docs/benchmarks.md on real model families at real vocabularies (bench/report.py
puts them in): the cross-vocabulary steps against kd, and scoring memory at 152k entries."""

from __future__ import annotations

GIB = 2 ** 30


def cross_vocab_section(data: dict, goals: list) -> list[str]:
    lines = ["## 8. Distillation across tokenizers at a 152k vocabulary", "",
             ("Seconds per training step of the cross-vocabulary modes against plain kd, script "
              "[bench/cross_vocab.py](../bench/cross_vocab.py): a random Qwen2-shaped teacher (4 layers × 256, the "
              "Qwen2 tokenizer, 151,646 entries); kd distils a Qwen2-tokenizer student, uld and dskd-cma a "
              "GPT-2-tokenizer one (2 × 128, 50,257 entries); batch 4 × 128, each mode in a fresh process, the median "
              "step after two warm-up steps (the sampler's batch with the teacher's re-tokenisation, forwards, loss, "
              "backward, AdamW). Why and how: [docs/families.md](families.md)."), "",
             "| version | mode | s/step | × kd | peak RSS | load average |", "|---|---|---:|---:|---:|---|"]
    for label, entry in data.items():
        for mode, r in entry["modes"].items():
            lines.append(f"| {label} | {mode} | {r['step_s']:.1f} | {r['vs_kd']:.2f}× | {r['peak_rss_mb']:,.0f} MB "
                         f"| {entry.get('load_average', 'idle')} |")
    lines += ["", "Each row's command (the first two labels ran on models with tied embeddings, built outside the "
              "bench; the last on the bench's own, tests/families.py, on an idle machine): "
              + "; ".join(f"*{label}*: `{entry['command']}`" for label, entry in data.items()) + "."]
    last = list(data.values())[-1]["modes"]
    worst = max(r["vs_kd"] for m, r in last.items() if m != "kd")
    goals.append(("cross-vocabulary steps (uld, dskd-cma) within 1.5× of kd at 152k entries",
                  ", ".join(f"{m} {r['vs_kd']:.2f}×" for m, r in last.items() if m != "kd"), worst <= 1.5))
    return lines + [""]


def scoring_memory_section(data: dict, goals: list) -> list[str]:
    model = data["model"]
    lines = ["## 9. Scoring memory at a 152k vocabulary", "",
             (f"`evaluate_model` (what `kdh eval` runs) of a random Qwen2-shaped model, {model['layers']} layers × "
              f"{model['hidden']}, {model['parameters'] / 1e6:.0f}M parameters, the Qwen2 tokenizer "
              f"({model['vocabulary']:,} entries), on the {data['suite']} suite's slices over the {data['demo_size']} "
              f"world, {data['limit']} documents a slice; each run a fresh process, its peak resident memory (VmHWM). "
              "*Before*: lm-eval's own `HFLM`, which takes the log-softmax of the whole batch's logits; *after*: kdh's "
              "`BoundedHFLM`, the output layer a chunk of positions at a time. Script "
              "[bench/scoring_memory.py](../bench/scoring_memory.py); how: [docs/scoring-memory.md](scoring-memory.md)."),
             "", "| scorer | batch | peak RSS | scoring seconds |", "|---|---:|---:|---:|"]
    for r in data["runs"]:
        lines.append(f"| {r['variant']} | {r['batch_size']} | {r['peak_rss_kib'] * 1024 / GIB:.2f} GiB "
                     f"| {r['scoring_seconds']:.0f} |")
    after = [r for r in data["runs"] if r["variant"] == "after"]
    peak = max(r["peak_rss_kib"] * 1024 for r in after) / GIB
    lines += ["", (f"The scores of both scorers agree: the largest difference over {data['values_compared']} values is "
                   f"{data['max_abs_difference']:g}.")]
    goals.append((f"`kdh eval` of a {model['parameters'] / 1e6:.0f}M-parameter, {model['vocabulary'] / 1000:.0f}k-vocabulary "
                  "model below 3 GB peak, scores equal to lm-eval's own",
                  f"{peak:.2f} GiB; largest score difference {data['max_abs_difference']:g}",
                  peak < 3 * 1e9 / GIB and data["max_abs_difference"] <= 1e-6))
    return lines + [""]


def classify_section(data: dict, goals: list) -> list[str]:
    lines = ["## 10. Domain classification of unlabelled corpora (`kdh classify`)", "",
             ("A hashed-n-gram multinomial logistic regression (harness/classify.py; why: [docs/classify.md](classify.md)), "
              "script [bench/classify.py](../bench/classify.py).")]
    acc = data.get("accuracy")
    if acc:
        domains = list(acc["documents"])
        held = sum(d["held_out"] for d in acc["documents"].values())
        lines += ["", (f"**Accuracy**: trained on half of each domain of the {acc['world']} demo world, tested on the other "
                       f"half ({held:,} documents): **{100 * acc['accuracy']:.1f}%**, fitted in "
                       f"{acc['train_cpu_seconds']:.1f} CPU-seconds. Confusion (rows: the true domain):"), "",
                  "| domain | " + " | ".join(f"→ {d}" for d in domains) + " | recall |",
                  "|---|" + "---:|" * (len(domains) + 1)]
        for row in acc["confusion"]:
            lines.append(f"| {row['domain']} | " + " | ".join(f"{row['→ ' + d]:,}" for d in domains)
                         + f" | {100 * row['recall']:.1f}% |")
        goals.append(("`kdh classify` held-out accuracy ≥ 95% on the demo world (half of each domain)",
                      f"{100 * acc['accuracy']:.1f}%", acc["accuracy"] >= 0.95))
    speed = data.get("throughput")
    if speed:
        lines += ["", (f"**Throughput**: {speed['documents']:,} documents of {speed['mean_bytes']:,.0f} bytes on "
                       f"{speed['workers']} workers: {speed['seconds']:.1f} s, **{speed['documents_per_s']:,.0f} "
                       f"documents/s** (load average {speed['load_average_at_start']:.1f} at the start); the model alone "
                       f"{speed['model_documents_per_s_per_core']:,.0f} documents/s on one core.")]
        goals.append(("`kdh classify` ≥ 10,000 documents/s of ~1 KB on 2 cores",
                      f"{speed['documents_per_s']:,.0f} documents/s", speed["documents_per_s"] >= 10_000))
    mix = data.get("mixture")
    if mix:
        lines += ["", (f"**The loop on classified data**: the {mix['world']} world's training documents ({mix['documents']:,}) "
                       "mixed without labels, classified, prepared and distilled "
                       f"({mix['steps']} steps, DDK every {mix['interval']}), against the same run on the labelled corpus: "
                       "final DDK weights"), "", "| domain | labelled | classified | gap (points) |", "|---|---:|---:|---:|"]
        for d, w in mix["weights"]["labelled"].items():
            lines.append(f"| {d} | {w:.3f} | {mix['weights']['classified'][d]:.3f} | {mix['gap_points'][d]:.2f} |")
        goals.append(("DDK mixture from a classified corpus within 2 points of the labelled one",
                      f"largest gap {mix['max_gap_points']:.2f} points", mix["max_gap_points"] <= 2))
    return lines + [""]


def realistic_section(data: dict, goals: list) -> list[str]:
    """Section 11: the realistic pairs (bench/realistic.py): the step against TRL and a bare loop,
    and the scoring against lm-eval's own scorer."""
    lines = ["## 11. At a realistic size: a 124M student from a 4× teacher, at 50k and 152k entries", "",
             ("Random-initialised models of GPT-2 small's shape (50k: the GPT-2 tokenizer) and a Qwen2 shape of the same "
              "size (152k: the Qwen2 tokenizer), each from a teacher about 4× its parameters; batch "
              f"{data['batch']} × {data['block']} tokens, fp32, {data['steps'] - data['warmup']} timed steps after "
              f"{data['warmup']} of warm-up, each variant in a fresh process. The variants are section 1's (kdh end to "
              "end from the token store; a bare loop over materialised logits; TRL's GKD trainer as supervised forward "
              "KL). Peak RSS: from the moment both models are loaded (the kernel's mark reset then; loading holds a "
              "model's weights twice for a moment in every variant alike). MFU: the FLOP/s counted as in section 1 (6·N student + 2·N teacher per token, plus attention) over the "
              f"fp32 matmul peak measured in the same run ({data['peak_flops'] / 1e9:.0f} GFLOP/s). Script "
              "[bench/realistic.py](../bench/realistic.py); load average at the start "
              f"{data['machine']['load_average_at_start']:.1f}, and per row below."), "",
             "| vocabulary | model shapes (student / teacher) | variant | tokens/s | × bare | × TRL | peak RSS | MFU | load |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for vocab, entry in data["pairs"].items():
        steps = entry["steps"]
        shapes = " / ".join(f"{s['family']} {s['layers']}×{s['hidden']}" for s in entry["shapes"].values())
        for variant, r in steps.items():
            vs = {k: r["tokens_per_s"] / steps[k]["tokens_per_s"] if k in steps else None for k in ("bare", "trl-gkd")}
            lines.append(f"| {vocab} | {shapes} | {variant} | {r['tokens_per_s']:.1f} | "
                         + " | ".join("—" if v is None else f"{v:.2f}×" for v in vs.values())
                         + f" | {r['peak_after_load'] / GIB:.2f} GiB | {100 * r['mfu']:.1f}% | {r['load_average']:.1f} |")
        if "kdh" in steps and "trl-gkd" in steps:
            kdh, trl = steps["kdh"], steps["trl-gkd"]
            goals.append((f"kdh ahead of TRL GKD at a realistic size, {vocab} entries: tokens/s and peak memory",
                          f"{kdh['tokens_per_s'] / trl['tokens_per_s']:.2f}× its tokens/s, "
                          f"{kdh['peak_after_load'] / trl['peak_after_load']:.2f}× its peak memory",
                          kdh["tokens_per_s"] > trl["tokens_per_s"] and kdh["peak_after_load"] < trl["peak_after_load"]))
    lines += ["", ("**Where kdh is and is not ahead.** At 50k entries the models dominate a step (the output layer is a "
                   "fifth of the student's matmul work) and all three variants run the same arithmetic; TRL's single "
                   "[B·T, V] output matmul is a little faster than kdh's fused loss, which runs the output layers a chunk "
                   "of positions at a time (at most 24 MiB of logits a chunk) and forms the gradient as it goes: kdh "
                   "saves only the logits' memory there. At 152k entries the output layers dominate: TRL materialises both "
                   "models' [B, T, V] logits and their log-softmaxes, kdh never does, so kdh is ahead of TRL on both "
                   "tokens/s and memory. The bare loop, which also materialises the logits but keeps nothing else, is "
                   "faster than kdh at 152k: kdh's 24 MiB chunk cap is ≈ 40 positions at 152k entries, small matmuls "
                   "on the head; the cap (`CHUNK_BYTES`, distiller/losses.py) trades speed for memory, and a larger one would "
                   "move kdh toward the bare loop's speed and memory (not measured here).")]
    scored = [(vocab, role, s) for vocab, entry in data["pairs"].items() for role, s in entry.get("scoring", {}).items()]
    if scored:
        lines += ["", ("Scoring each model (`kdh eval`'s `evaluate_model`, kdh's chunked scorer) against the same call with "
                       "lm-eval's own `HFLM`, on the default suite over the tiny demo world, batch 4, the same documents:"),
                  "", "| vocabulary | model | parameters | kdh: seconds | kdh: peak RSS | lm-eval: seconds | lm-eval: peak RSS "
                      "| largest score difference |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for vocab, role, s in scored:
            lines.append(f"| {vocab} | {role} | {s['parameters'] / 1e6:.0f}M | {s['after_seconds']:.0f} | "
                         f"{s['after_peak_rss_kib'] * 1024 / GIB:.2f} GiB | {s['before_seconds']:.0f} | "
                         f"{s['before_peak_rss_kib'] * 1024 / GIB:.2f} GiB | {s['max_abs_difference']:.2g} |")
    lines += ["", f"Command: `{data['command']}` ({data['when']}, {data['seconds'] / 60:.0f} minutes)."
              + (f" {data['note']}" if data.get("note") else "")]
    return lines + [""]


def teacher_signal_section(data: dict, goals: list) -> list[str]:
    """Section 12: the stored teacher signal (bench/teacher_signal.py; how: docs/teacher-signal.md)."""
    import statistics

    size = data["bytes_per_position"]
    step, quality = data["step"], data["quality"]
    lines = ["## 12. Paying for the teacher once: the stored teacher signal", "",
             ("`kdh teacher-signal` stores per position the teacher's top-k ids with 4-bit log-probabilities (the tail "
              "is what they leave of 1), or ids drawn from its distribution (Sparse Logit Sampling). Script "
              "[bench/teacher_signal.py](../bench/teacher_signal.py); format and method: "
              f"[docs/teacher-signal.md](teacher-signal.md). Load average {data['machine']['load_at_start'][0]:.1f} "
              "at the start: the seconds are noisy, the ratios were measured side by side in one process."), "",
             "| bytes per position | top-32 | top-64 | sampled, 12 draws | sampled, 16 |", "|---|---:|---:|---:|---:|"]
    for vocab, label in (("gpt2", "GPT-2 (50,257 entries)"), ("qwen2", "Qwen2 (151,646)")):
        lines.append(f"| {label} | " + " | ".join(str(size[f"{vocab} {m}"]) for m in
                                                 ("top-k 32", "top-k 64", "sampled 12", "sampled 16")) + " |")
    goals.append(("stored signal ≤ 160 bytes a position at k = 64, ≤ 48 sampled (GPT-2's vocabulary)",
                  f"{size['gpt2 top-k 64']} and {size['gpt2 sampled 12']} (Qwen2's: {size['qwen2 top-k 64']} and "
                  f"{size['qwen2 sampled 12']})", size["gpt2 top-k 64"] <= 160 and size["gpt2 sampled 12"] <= 48))
    step_load = data.get("machine_step", data["machine"])["load_at_start"][0]
    lines += ["", (f"**Step** (load average {step_load:.1f} at the start): student {step['params']['student'] / 1e6:.2f}M, teacher {step['params']['teacher'] / 1e6:.1f}M "
                   f"({step['teacher_to_student']:.2f}×), batch {step['batch']}, vocabulary {step['vocab']:,}: live teacher "
                   f"{step['live_step_s']:.2f} s, stored top-64 {step['stored_step_s']:.2f} s, **{step['speedup']:.2f}× "
                   "faster**. The student's own forward and backward stay, so at a 4× teacher the ceiling is about "
                   "(3 + 4) / 3 ≈ 2.3× (docs/teacher-signal.md).")]
    by_teacher = data.get("step_by_teacher", [])
    if len(by_teacher) > 1:
        lines += ["", "The same step against larger teachers (same student, same batches; the estimate counts a "
                  "teacher forward as its parameters over the student's, against the student's 3 forward-equivalents):", "",
                  "| teacher | parameters | × the student | live teacher | stored top-64 | faster | estimate 1 + ratio / 3 |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['teacher_shape']} | {r['params']['teacher'] / 1e6:.1f}M | {r['teacher_to_student']:.2f}× | "
                  f"{r['live_step_s']:.2f} s | {r['stored_step_s']:.2f} s | **{r['speedup']:.2f}×** | "
                  f"{1 + r['teacher_to_student'] / 3:.2f}× |" for r in by_teacher]
    goals.append(("a step from the stored signal ≥ 3× faster than the live teacher at a 4× teacher",
                  f"{step['speedup']:.2f}× (ceiling ≈ 2.3× by the FLOP count)", step["speedup"] >= 3))
    rows = quality["rows"]
    domains = [k.split("/", 1)[1] for k in rows[0] if k.startswith("bpb/")]
    mean = {v: {k: statistics.mean(r[k] for r in rows if r["variant"] == v) for k in rows[0] if k.startswith("bpb/")}
            for v in dict.fromkeys(r["variant"] for r in rows)}
    ece = {v: [r["ece"] for r in rows if r["variant"] == v] for v in mean}
    lines += ["", (f"**Quality** on the tiny demo world, {quality['steps']} steps, mean of "
                   f"{len(ece['live'])} seeds: bits per byte per domain (change against the live teacher) and "
                   "next-token ECE (mean ± s.d.):"), "",
              "| target | " + " | ".join(domains) + " | ECE |", "|---|" + "---:|" * (len(domains) + 1)]
    worst = 0.0
    for v, m in mean.items():
        cells = []
        for d in domains:
            change = 100 * (m[f"bpb/{d}"] / mean["live"][f"bpb/{d}"] - 1)
            worst = max(worst, abs(change)) if v != "live" else worst
            cells.append(f"{m[f'bpb/{d}']:.4f}" + ("" if v == "live" else f" ({change:+.2f}%)"))
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {statistics.mean(ece[v]):.4f} ± {statistics.stdev(ece[v]):.4f} |")
    goals.append(("student quality from the stored signal (top-32, top-64, sampled) within 1% of full KD, 3 seeds",
                  f"largest change {worst:.2f}%", worst <= 1))
    gap = statistics.mean(ece["sampled-32"]) - statistics.mean(ece["top-32"])
    spread = max(statistics.stdev(ece["sampled-32"]), statistics.stdev(ece["top-32"]))
    goals.append(("sampled target's ECE no worse than top-k's at equal bytes, within the seeds' spread "
                  "(80 bytes: 32 draws vs top-32)",
                  f"{statistics.mean(ece['sampled-32']):.4f} vs {statistics.mean(ece['top-32']):.4f}: a gap of "
                  f"{gap:+.4f}, inside one seed's s.d. ({spread:.4f})", gap <= spread))
    return lines + [""]


def onpolicy_section(speed: dict | None, quality: dict | None, goals: list, warm: dict | None = None) -> list[str]:
    """Section 13: on-policy and sequence-level distillation (bench/onpolicy.py, bench/onpolicy_quality.py;
    how: docs/on-policy.md)."""
    lines = ["## 13. On-policy and sequence-level distillation", ""]
    if speed:
        lines += [(f"kdh's on-policy step against TRL's `GKDTrainer` on the same models ([bench/onpolicy.py]"
                   f"(../bench/onpolicy.py)): batch {speed['batch']}, prompts of {speed['prompt_tokens']} tokens, "
                   f"{speed['new_tokens']} sampled, λ = {speed['lmbda']}, β = {speed['beta']}, fp32, "
                   f"{speed['steps']} steps of which the first {speed['warmup']} are not counted. Each step is timed "
                   "and classed (on- or off-policy); tokens/s is that of a λ = 0.5 mixture of the two means. Load "
                   f"average {speed['load_average_at_end']:.1f} at the end."), "",
                  "| vocabulary | | on-policy step | off-policy step | tokens/s at λ = 0.5 | peak after loading |",
                  "|---:|---|---:|---:|---:|---:|"]
        by = {(r["vocab"], r["side"]): r for r in speed["results"]}
        for (vocab, side), r in by.items():
            lines.append(f"| {vocab:,} | {'kdh' if side == 'kdh' else 'TRL ' + r.get('trl', '')} | "
                         f"{r['on_step_seconds']:.3f} s | {r['off_step_seconds']:.3f} s | {r['tokens_per_s']:,.0f} | "
                         f"{r['peak_after_load'] / 2**30:.2f} GiB |")
        for vocab in dict.fromkeys(v for v, _ in by):
            kdh, trl = by.get((vocab, "kdh")), by.get((vocab, "trl"))
            if kdh and trl:
                speedup, memory = kdh["tokens_per_s"] / trl["tokens_per_s"], kdh["peak_after_load"] / trl["peak_after_load"]
                goals.append((f"on-policy step (λ = 0.5) vs TRL's GKDTrainer at {vocab:,} entries: ahead in tokens/s "
                              "and memory", f"{speedup:.2f}× the tokens/s, {memory:.2f}× the memory",
                              speedup >= 1 and memory <= 1))
        lines.append("")
    if quality:
        lines += _quality_table(quality, goals, "from the demo student")
    if warm:
        lines += _quality_table(warm, goals, f"from a trained student ({warm['args']['warm_steps']:,} supervised steps first)")
    if quality or warm:
        lines += [("When on-policy KD wins and when it does not, what each method costs in likelihood, and a second "
                   "speed run: [docs/on-policy.md](on-policy.md)."), ""]
    return lines


def _quality_table(quality: dict, goals: list, start: str) -> list[str]:
    """One quality run of bench/onpolicy_quality.py: each arm's slices, mean ± s.d. over the seeds, and
    the goal (on-policy ahead of supervised on the generation slices' mean, and in how many seeds)."""
    summary, arms = quality["summary"], list(quality["arms"])
    seeds = len(next(iter(quality["arms"].values())))
    args = quality["args"]
    lines = [(f"Quality on the demo world, {start} ([bench/onpolicy_quality.py](../bench/onpolicy_quality.py)): "
              f"{args['steps']} steps per arm, {seeds} seeds, {args.get('new_tokens', 32)} tokens sampled per on-policy "
              "row, scored on suites/generation.yaml; the generation slices count agreement with the teacher's own "
              "generation (Rouge-L; exact match for arithmetic), the ppl slices bits per byte (lower is better). "
              "Mean ± s.d."),
             "", "| slice | initial student | " + " | ".join(arms) + " |", "|---|---:|" + "---:|" * len(arms)]
    for key, values in summary.items():
        lines.append(f"| {key} | {quality['initial'][key]:.3f} | "
                     + " | ".join(f"{values[a]['mean']:.3f} ± {values[a]['sd']:.3f}" for a in arms) + " |")
    lines.append("")
    generated = [k for k in summary if not k.endswith("/ppl")]
    on_policy = [a for a in arms if a.startswith("on-policy") and "seq-kd" not in a]
    if not (on_policy and "supervised" in arms and generated):
        return lines

    def gain(arm: str, runs: list[int]) -> float:  # mean over the generation slices and the runs (seeds)
        return sum(quality["arms"][arm][r]["slices"][k] - quality["arms"]["supervised"][r]["slices"][k]
                   for k in generated for r in runs) / (len(generated) * len(runs))

    everyone = list(range(seeds))
    gains = {a: gain(a, everyone) for a in on_policy}
    ahead = {a: sum(gain(a, [r]) > 0 for r in everyone) for a in on_policy}
    goals.append((f"on-policy KD writes more like the teacher than supervised KD, {start} (generation slices, "
                  f"{seeds} seeds)", "; ".join(f"{a} {g:+.3f} (ahead in {ahead[a]} of {seeds} seeds)" for a, g in gains.items())
                  + ": the mean change over the generation slices", max(gains.values()) > 0))
    return lines
