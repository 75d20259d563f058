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
              "backward, AdamW). Why and how: [families.md](families.md)."), "",
             "| version | mode | s/step | × kd | peak RSS | load average |", "|---|---|---:|---:|---:|---|"]
    for label, entry in data.items():
        for mode, r in entry["modes"].items():
            lines.append(f"| {label} | {mode} | {r['step_s']:.1f} | {r['vs_kd']:.2f}× | {r['peak_rss_mb']:,.0f} MB "
                         f"| {entry.get('load_average', 'idle')} |")
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
              "[bench/scoring_memory.py](../bench/scoring_memory.py); how: [scoring-memory.md](scoring-memory.md)."),
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
