"""Speed, memory and overhead of kdh's distillation step vs a bare PyTorch loop doing the same arithmetic.

    python bench/distill_step.py                       # everything below; writes docs/distill-step.md (~7 min, 2 cores)
    python bench/distill_step.py --vocab 1024 --steps 30 --warmup 5 --repeats 1 --out /tmp/x.md   # a quicker look
    python bench/distill_step.py --profile 50000       # torch.profiler + cProfile of kdh's loop, then the loss
                                                       # alone per chunk size (not written to the doc)
    python bench/distill_step.py --render ~/.kdh/bench/distill-step.json   # rewrite the doc from saved results

Run it on an otherwise idle machine: with 2 cores, a second busy process slows torch several-fold.
The raw results (every repeat, per-step durations) are saved to <kdh home>/bench/<stem of --out>.json.

For each vocabulary (the demo's 1024, and 50,000 with random-initialised models of the demo teacher's and
student's shapes), batch 8 × 256 tokens, the same number of steps for every variant, each variant in a
fresh subprocess (so peaks do not mix):

- kdh: ``distiller.trainer.distill`` end to end (mixture "ddk", γ = 0.2, K = 50, fused chunked loss with
  chunk 256, no checkpoint but the final one, progress off). Its phases are timed by wrapping the
  functions the loop calls (sampler, ``step.last_hidden``, ``step.distillation_loss``,
  ``Accelerator.backward`` / ``clip_grad_norm_``, the optimizer and scheduler,
  ``sources.domain_perplexities``, ``_log_metrics``, the checkpoint writer): a few ``perf_counter``
  calls a step, the distiller itself is untouched.
- bare: a nanoGPT-style loop: random rows of the same packed blocks, teacher forward under no_grad,
  student forward, CE + 0.2 · forward KL over materialised [B, T, V] logits (what
  ``distillation_loss_reference`` computes), backward, clip 1.0, AdamW (same groups, betas, schedule).
- trl-gkd: TRL's ``GKDTrainer`` as supervised distillation (bench/trl_gkd.py; needs the bench extra).
- bare-fused (on request): the same bare loop with kdh's fused chunked ``distillation_loss`` instead,
  i.e. kdh's arithmetic without kdh's loop; kdh vs bare-fused is the loop's own overhead.
- kdh-chunk128 (on request): kdh with ``chunk_size=128`` (a DistillConfig setting).

Timed: steps ``warmup``..``steps`` (the first ``warmup`` steps are not counted). Peak memory is the
subprocess's ru_maxrss (glibc's default malloc), also given minus the RSS right after the models loaded.
FLOP/s: 6·N_student + 2·N_teacher per token (N = parameters doing matmuls, i.e. the transformer blocks
plus the LM head; the tied input embedding is a lookup and counted once, as the head), vs the measured
fp32 peak of a 2048 × 2048 torch.matmul on the same threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOMAINS = ("code", "prose", "arithmetic", "records")
BATCH, BLOCK, KD_WEIGHT, INTERVAL, CHUNK = 8, 256, 0.2, 50, 256
VARIANTS = ("kdh", "kdh-chunk128", "bare", "bare-fused", "trl-gkd", "trl-gkd-bf16")
SMALL_VARIANTS = ("kdh", "bare", "trl-gkd", "trl-gkd-bf16")
LARGE_VARIANTS = ("kdh", "bare", "trl-gkd")
MIB = 1024 * 1024


# ------------------------------------------------------------------------------------------ helpers
def _timed_window(durations: list[float], phases: list[dict], warmup: int, steps: int):
    """The steps after warm-up: (their indices, total seconds, seconds per phase, tokens)."""
    window = range(warmup, steps)
    breakdown = defaultdict(float)
    for i in window:
        for name, seconds in phases[i].items():
            breakdown[name] += seconds
    return window, sum(durations[i] for i in window), breakdown, len(window) * BATCH * BLOCK


def _rss() -> int:
    """Current resident set size in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _reset_peak() -> None:
    """Start the kernel's peak-RSS mark (VmHWM) again from the current RSS (Linux ≥ 4.0), so that
    ``_peak_since_reset`` leaves out loading, where transformers holds a model's weights twice."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_since_reset() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _world():
    from harness.demo import ensure_world
    from harness.home import configure_environment, kdh_home

    configure_environment()
    # The default world (what section 1 measures on); bench/realistic.py, which needs only text, asks for the tiny one.
    return ensure_world(kdh_home(), os.environ.get("KDH_BENCH_WORLD", "default"), progress=False)


def world_store(world, student_dir: str):
    """The demo world's train/validation text as a token store of the student's tokenizer (prepared
    once per tokenizer in the kdh home: the same inputs find the same store)."""
    from transformers import AutoTokenizer

    from distiller.prepare import prepare
    from harness.home import kdh_home

    corpora = {d: {"train": [world.domain_file(d, "train.jsonl")],
                   "validation": [world.domain_file(d, "validation.jsonl")]} for d in DOMAINS}
    return prepare(corpora, AutoTokenizer.from_pretrained(student_dir), root=kdh_home() / "stores").root


def _matmul_params(model) -> int:
    """Parameters that take part in a matmul per token: everything but a separate input embedding
    (a lookup). With tied embeddings the shared matrix is the LM head and counted once."""
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    return total - (embed.numel() if embed is not head else 0)


def _model_info(model) -> dict:
    c = model.config
    return {"n_matmul": _matmul_params(model), "layers": c.num_hidden_layers, "hidden": c.hidden_size,
            "attn_dim": c.num_attention_heads * getattr(c, "head_dim", c.hidden_size // c.num_attention_heads),
            "vocab": c.vocab_size, "tied": model.get_input_embeddings().weight is model.get_output_embeddings().weight}


# ------------------------------------------------------------------------------------------ children
def child_build(spec: dict) -> dict:
    """Random-initialised Llama models with the demo teacher/student shapes and ``vocab`` entries,
    with the demo tokenizer copied in (distill checks the tokenizers and the head rows agree)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    world = _world()
    out = Path(spec["dir"])
    for i, (name, source) in enumerate((("teacher", world.teacher_dir), ("student", world.student_dir))):
        config = AutoConfig.from_pretrained(source)
        config.vocab_size = spec["vocab"]
        torch.manual_seed(1 + i)
        model = AutoModelForCausalLM.from_config(config)
        assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # tied, like the demo
        model.save_pretrained(out / name, safe_serialization=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(Path(source) / f, out / name / f)
    return {"dir": str(out)}


def child_matmul(spec: dict) -> dict:
    import torch

    n = spec.get("n", 2048)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        torch.matmul(a, b)
    times = []
    for _ in range(spec.get("repeat", 10)):
        started = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - started)
    times.sort()
    return {"n": n, "threads": torch.get_num_threads(), "best_s": times[0], "median_s": times[len(times) // 2],
            "peak_flops": 2 * n ** 3 / times[0], "median_flops": 2 * n ** 3 / times[len(times) // 2]}


def child_kdh(spec: dict) -> dict:
    """distill() end to end, its phases timed by wrapping what the loop calls."""
    import torch
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer
    from accelerate.scheduler import AcceleratedScheduler
    from transformers import AutoModelForCausalLM

    import distiller.checkpoint as ckpt
    from distiller import sources, step, trainer
    from distiller.data import DomainSampler

    world = _world()
    steps, warmup = spec["steps"], spec["warmup"]
    starts: list[float] = []  # perf_counter at the start of each step (its sampler call)
    phases: list[dict] = []  # seconds per phase, per step
    marks: dict = {"loaded": [], "in_ddk": False, "pre_loop_ppl": []}
    info: dict = {}

    def add(name: str, seconds: float) -> None:
        if phases and not marks["in_ddk"]:
            phases[-1][name] += seconds

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                add(name, time.perf_counter() - started)
        return wrapper

    original_from_pretrained = AutoModelForCausalLM.from_pretrained

    def from_pretrained(*args, **kwargs):
        model = original_from_pretrained(*args, **kwargs)
        marks["loaded"].append(_rss())
        if len(marks["loaded"]) == 2:  # student, then teacher: the run's own memory from here
            _reset_peak()
        info["teacher" if len(marks["loaded"]) == 2 else "student"] = _model_info(model)
        return model

    AutoModelForCausalLM.from_pretrained = staticmethod(from_pretrained)

    original_next_batch = DomainSampler.next_batch

    def next_batch(self, *args, **kwargs):
        started = time.perf_counter()
        if not starts:
            marks["loop_rss"], marks["loop_peak"] = _rss(), _peak()
        starts.append(started)
        phases.append(defaultdict(float))
        rows = original_next_batch(self, *args, **kwargs)
        add("data", time.perf_counter() - started)
        return rows

    DomainSampler.next_batch = next_batch

    original_last_hidden = step.last_hidden

    def last_hidden(model, input_ids):
        started = time.perf_counter()
        out = original_last_hidden(model, input_ids)
        add("teacher forward" if torch.is_inference_mode_enabled() else "student forward",
            time.perf_counter() - started)
        return out

    step.last_hidden = last_hidden
    step.distillation_loss = timed("loss forward (fused head + CE + KL)", step.distillation_loss)

    original_ppl = sources.domain_perplexities

    def domain_perplexities(*args, **kwargs):
        started = time.perf_counter()
        marks["in_ddk"] = True
        try:
            return original_ppl(*args, **kwargs)
        finally:
            marks["in_ddk"] = False
            seconds = time.perf_counter() - started
            if phases:
                phases[-1]["DDK (validation perplexities)"] += seconds
            else:
                marks["pre_loop_ppl"].append(seconds)  # the teacher's, then the student's

    sources.domain_perplexities = domain_perplexities
    trainer._log_metrics = timed("logging (_log_metrics)", trainer._log_metrics)
    Accelerator.backward = timed("backward", Accelerator.backward)
    Accelerator.clip_grad_norm_ = timed("grad clip", Accelerator.clip_grad_norm_)
    AcceleratedOptimizer.step = timed("optimizer step", AcceleratedOptimizer.step)
    AcceleratedOptimizer.zero_grad = timed("optimizer step", AcceleratedOptimizer.zero_grad)
    AcceleratedScheduler.step = timed("optimizer step", AcceleratedScheduler.step)

    original_save = ckpt.save_checkpoint

    def save_checkpoint(*args, **kwargs):
        marks["save_start"], marks["save_peak"] = time.perf_counter(), _peak()
        marks["peak_after_load"] = _peak_since_reset()
        original_save(*args, **kwargs)
        marks["save_seconds"] = time.perf_counter() - marks["save_start"]

    ckpt.save_checkpoint = save_checkpoint

    output = Path(tempfile.mkdtemp(prefix="kdh-distill-step-"))
    try:
        config = trainer.DistillConfig(
            teacher=spec["teacher"], student=spec["student"], output_dir=str(output), steps=steps,
            batch_size=BATCH, block_size=BLOCK, kd_weight=KD_WEIGHT, mixture="ddk", interval=INTERVAL,
            val_blocks=spec.get("val_blocks", 32), chunk_size=spec.get("chunk", CHUNK), save_every=10 ** 9,
            progress=False, seed=0)
        result = trainer.distill(config, world_store(world, spec["student"]))
        end_peak = _peak()
    finally:
        shutil.rmtree(output, ignore_errors=True)

    # Step i ends where step i+1 starts; the last one where the final checkpoint starts.
    ends = starts[1:] + [marks["save_start"]]
    durations = [e - s for s, e in zip(starts, ends)]
    window, window_seconds, breakdown, tokens = _timed_window(durations, phases, warmup, steps)
    breakdown["other (loss.item, clone, tqdm, mixture update, ...)"] = window_seconds - sum(breakdown.values())
    return {
        "variant": spec["kind"], "vocab": spec["vocab"], "steps": steps, "warmup": warmup,
        "threads": torch.get_num_threads(), "models": info,
        "tokens_per_s": tokens / window_seconds, "window_seconds": window_seconds,
        "step_seconds": window_seconds / len(window), "breakdown": dict(breakdown),
        "step_durations": durations,
        "result_tokens_per_s": result.tokens_per_s, "result_seconds": result.seconds,
        "result_ddk_seconds": result.ddk_seconds, "pre_loop_ppl_seconds": marks["pre_loop_ppl"],
        "result_setup_seconds": getattr(result, "setup_seconds", None),
        "final_checkpoint_seconds": marks["save_seconds"],
        "rss_after_models": marks["loaded"][-1], "rss_loop_start": marks["loop_rss"],
        "peak_after_load": marks["peak_after_load"],
        "peak_before_loop": marks["loop_peak"], "peak_loop": marks["save_peak"], "peak_end": end_peak,
    }


def child_bare(spec: dict, fused: bool) -> dict:
    """The same arithmetic, nanoGPT style: no Accelerate, no sampler, no DDK, no logging."""
    import math

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distiller.data import pack_blocks, read_texts
    from distiller.losses import distillation_loss, distillation_loss_reference

    world = _world()
    steps, warmup = spec["steps"], spec["warmup"]
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(spec["student"])
    student = AutoModelForCausalLM.from_pretrained(spec["student"], use_safetensors=True)
    teacher = AutoModelForCausalLM.from_pretrained(spec["teacher"], use_safetensors=True)
    teacher.requires_grad_(False).eval()
    rss_after_models = _rss()
    _reset_peak()
    blocks = torch.cat([pack_blocks(read_texts(world.domain_file(d, "train.jsonl")), tokenizer, BLOCK,
                                    tokenizer.eos_token_id, domain=d) for d in DOMAINS])
    decay = [p for p in student.parameters() if p.dim() >= 2]
    no_decay = [p for p in student.parameters() if p.dim() < 2]
    lr, min_lr, warm = 2e-3, 2e-4, 20  # DistillConfig's defaults
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.95))

    def get_lr(step: int) -> float:
        if step < warm:
            return lr * (step + 1) / warm
        done = min(1.0, (step - warm) / max(1, steps - warm))
        return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * done))

    def last_hidden(model, x):
        return model(input_ids=x, logits_to_keep=1, output_hidden_states=True).hidden_states[-1]

    def reference_loss(s_logits, t_logits, y):
        vocab = s_logits.shape[-1]
        log_q = F.log_softmax(s_logits.float().view(-1, vocab), dim=-1)
        log_p = F.log_softmax(t_logits.float().view(-1, vocab), dim=-1)
        ce = F.nll_loss(log_q, y.reshape(-1))
        kd = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")  # Σ p (log p − log q) / N
        return ce + KD_WEIGHT * kd

    generator = torch.Generator().manual_seed(0)
    student.train()
    phases: list[dict] = []
    durations: list[float] = []
    checked = None
    for step in range(steps):
        times = defaultdict(float)
        t0 = time.perf_counter()
        rows = blocks[torch.randint(len(blocks), (BATCH,), generator=generator)]
        x, y = rows[:, :-1], rows[:, 1:]
        t1 = time.perf_counter()
        with torch.no_grad():
            teacher_out = last_hidden(teacher, x) if fused else teacher(input_ids=x).logits
        t2 = time.perf_counter()
        if fused:
            hidden = last_hidden(student, x)
            t3 = time.perf_counter()
            loss = distillation_loss(hidden, student.get_output_embeddings(), teacher_out,
                                     teacher.get_output_embeddings(), y, kd_weight=KD_WEIGHT, chunk_size=CHUNK)[0]
        else:
            s_logits = student(input_ids=x).logits
            t3 = time.perf_counter()
            loss = reference_loss(s_logits, teacher_out, y)
            if step == 0 and spec["vocab"] <= 4096:  # the plain formula is distillation_loss_reference's
                with torch.no_grad():
                    checked = float((distillation_loss_reference(s_logits, teacher_out, y, kd_weight=KD_WEIGHT)[0]
                                     - loss).abs())
        t4 = time.perf_counter()
        loss.backward()
        t5 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        t6 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 0:
            loss.item()
        t7 = time.perf_counter()
        times.update({"data": t1 - t0, "teacher forward": t2 - t1, "student forward": t3 - t2,
                      "loss forward (fused head + CE + KL)" if fused else "loss forward (CE + KL on logits)": t4 - t3,
                      "backward": t5 - t4, "grad clip": t6 - t5, "optimizer step": t7 - t6})
        phases.append(times)
        durations.append(t7 - t0)
        del loss, teacher_out
        if not fused:
            del s_logits
    end_peak = _peak()
    window, window_seconds, breakdown, tokens = _timed_window(durations, phases, warmup, steps)
    return {
        "variant": "bare-fused" if fused else "bare", "vocab": spec["vocab"], "steps": steps, "warmup": warmup,
        "threads": torch.get_num_threads(), "models": {"student": _model_info(student), "teacher": _model_info(teacher)},
        "tokens_per_s": tokens / window_seconds, "window_seconds": window_seconds,
        "step_seconds": window_seconds / len(window), "breakdown": dict(breakdown), "step_durations": durations,
        "rss_after_models": rss_after_models, "peak_loop": end_peak, "peak_end": end_peak,
        "peak_after_load": _peak_since_reset(), "reference_check_abs_diff": checked,
    }


def child_trl(spec: dict) -> dict:
    from bench.trl_gkd import child_trl as run

    return run(spec, batch=BATCH, block=BLOCK, domains=DOMAINS, world=_world(), rss=_rss, peak=_peak,
               model_info=_model_info, reset_peak=_reset_peak, peak_since_reset=_peak_since_reset)


# ------------------------------------------------------------------------------------------ parent
def run_child(spec: dict) -> dict:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], check=False,
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"child {spec['kind']} failed (exit {out.returncode})")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    return result


def flops_per_token(models: dict) -> dict:
    s, t = models["student"], models["teacher"]
    model = 6 * s["n_matmul"] + 2 * t["n_matmul"]
    # Attention scores and weighted values (QKᵀ, AV): 2·2·T·d_attn per token and layer in the forward,
    # counted as a full (not causal) square, as PaLM's appendix does.
    attention = 3 * 4 * s["layers"] * BLOCK * s["attn_dim"] + 4 * t["layers"] * BLOCK * t["attn_dim"]
    # Extra work of the fused loss: its checkpointed chunks run the student head forward again in the
    # backward, and the teacher head with it (it is inside the recomputed function).
    recompute = 2 * s["vocab"] * s["hidden"] + 2 * t["vocab"] * t["hidden"]
    return {"model": model, "attention": attention, "fused_recompute": recompute}


ARITHMETIC = ("teacher forward", "student forward", "loss forward (fused head + CE + KL)",
              "loss forward (CE + KL on logits)", "backward", "grad clip", "optimizer step")
BOOKKEEPING = ("data", "logging (_log_metrics)")
DDK_PHASE = "DDK (validation perplexities)"


def best(runs: list[dict]) -> dict:
    """Of a variant's repeats, the fastest: the one least disturbed by the machine's other tenants."""
    return max(runs, key=lambda r: r["tokens_per_s"])


def overhead(kdh: dict) -> dict:
    """kdh's step split into arithmetic and the rest, DDK amortised at one update per K steps: the update
    timed in the loop if the window holds one, else the student's validation-perplexity pass that distill()
    runs before the loop (the same work; Eq. 2 itself takes microseconds)."""
    n = kdh["steps"] - kdh["warmup"]
    b = kdh["breakdown"]
    ddk_window = b.get(DDK_PHASE, 0.0)
    core = (kdh["window_seconds"] - ddk_window) / n  # a step without a mixture update
    update = ddk_window or kdh["pre_loop_ppl_seconds"][-1]  # the in-loop update if one was timed
    per_step_ddk = update / INTERVAL
    bookkeeping = sum(b.get(k, 0.0) for k in BOOKKEEPING) / n
    arithmetic = sum(b.get(k, 0.0) for k in ARITHMETIC) / n
    step = core + per_step_ddk
    return {"update_seconds": update, "ddk_in_window": ddk_window, "step": step,
            "bookkeeping_share": (bookkeeping + per_step_ddk) / step, "ddk_share": per_step_ddk / step,
            "data_logging_share": bookkeeping / step, "arithmetic_share": arithmetic / step,
            "other_share": (core - arithmetic - bookkeeping) / step}


def _results_file(out: Path) -> Path:
    """Where a run's raw results go: <kdh home>/bench/<the doc's name>.json, so a trial run with another
    --out never replaces the results behind docs/distill-step.md."""
    from harness.home import kdh_home

    folder = kdh_home() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{out.stem}.json"


def write_doc(path: Path, argv: list[str], machine: dict, peaks: list[dict], results: dict, wall: float,
              date: str | None = None) -> str:
    peak = max(peaks, key=lambda p: p["peak_flops"])
    lines = [
        "# kdh's distillation step vs a bare PyTorch loop",
        "",
        "Run: `python bench/distill_step.py" + (f" {' '.join(argv)}" if argv else "") + "`"
        + f" ({wall / 60:.1f} min wall clock; [bench/distill_step.py](../bench/distill_step.py), whose docstring says "
        "what is measured and how). Profile and loss-alone figures: `python bench/distill_step.py --profile 50000`.",
        "",
        f"Machine: {machine['cpus']} CPU cores ({machine['cpu']}, a VM), {machine['memory_gib']:.0f} GiB, torch "
        f"{machine['torch']}, {machine['threads']} torch threads, Python {machine['python']}; {date or time.strftime('%Y-%m-%d')}. "
        f"fp32 matmul peak, 2048 × 2048 `torch.matmul`, best of 10 on {peak['threads']} threads: "
        f"**{peak['peak_flops'] / 1e9:.0f} GFLOP/s** (measured before and after the runs: "
        + ", ".join(f"{p['peak_flops'] / 1e9:.0f}" for p in peaks) + " GFLOP/s).",
        "",
        (f"Setup: demo teacher (Llama, 4 layers × 128) and student (2 × 64), tied embeddings; batch {BATCH} × {BLOCK} "
        f"tokens; CE + {KD_WEIGHT}·forward KL, T = 1; AdamW, lr 2e-3 with warm-up and cosine, clip 1.0. "
        "Vocabulary 50,000: random-initialised models of the same shapes with the demo tokenizer copied in. Every "
        "variant runs in a fresh subprocess; the first steps are warm-up and not timed; each variant's repeats "
        "are interleaved with the others' and the fastest is shown (the VM's speed drifts by ±20% between "
        "processes: the same teacher forward took 49 to 72 ms at V = 1024 in the trial runs)."),
        "",
        ("- **kdh**: `distill()` end to end: mixture ddk (K = 50), fused chunked loss (chunk 256, at most 24 MiB), "
        "progress off, only the final checkpoint (outside the timed window, shown apart). Its phases are timed by "
        "wrapping the functions the loop calls; for CE + KL the loss forms its gradient in the forward, so "
        "kdh's 'loss forward' includes that work and its 'backward' does not."),
        ("- **trl-gkd**: TRL's `GKDTrainer` (lmbda 0, beta 0, seq_kd off: supervised forward KL, no generations) on "
        "the same rows, model, optimiser settings and steps, in fp32; timed between its step-end callbacks. "
        "**trl-gkd-bf16**: the same with TRL's default precision, bf16 autocast (also on a CPU)."),
        ("- **bare**: a nanoGPT-style loop: random rows of the same packed blocks, teacher forward under no_grad, "
        "student forward, CE + 0.2·KL over materialised [B, T, V] logits (= `distillation_loss_reference`; "
        "checked equal at V = 1024), backward, clip, AdamW with the same groups."),
        "",
        "## Goals",
        "",
        ("| vocab | data + logging + DDK in kdh's step (goal < 10%) | kdh / bare tokens/s (goal ≥ 0.90) "
        "| kdh / bare peak RSS (goal ≤ 0.50 at 50k) | same, minus RSS after loading | TRL GKD / bare tokens/s "
        "| TRL GKD / bare peak RSS |"),
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for vocab, entry in results.items():
        runs = {k: best(v) for k, v in entry["runs"].items()}
        bare, trl = runs.get("bare"), runs.get("trl-gkd")
        for name in [n for n in runs if n.startswith("kdh")]:
            kdh = runs[name]
            o = overhead(kdh)
            cells = [f"{vocab:,}" + ("" if name == "kdh" else f" ({name})"),
                     f"{100 * o['bookkeeping_share']:.1f}% ({'met' if o['bookkeeping_share'] < 0.10 else 'missed'})"]
            if bare:
                ratio = kdh["tokens_per_s"] / bare["tokens_per_s"]
                mem = kdh["peak_loop"] / bare["peak_loop"]
                dmem = (kdh["peak_loop"] - kdh["rss_after_models"]) / max(1, bare["peak_loop"] - bare["rss_after_models"])
                cells += [f"{ratio:.2f} ({'met' if ratio >= 0.9 else 'missed'})",
                          f"{mem:.2f}" + (f" ({'met' if mem <= 0.5 else 'missed'})" if vocab >= 50_000 else ""),
                          f"{dmem:.2f}"]
            else:
                cells += ["-", "-", "-"]
            if trl and bare:
                cells += [f"{trl['tokens_per_s'] / bare['tokens_per_s']:.2f}", f"{trl['peak_loop'] / bare['peak_loop']:.2f}"]
            else:
                cells += ["-", "-"]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for vocab, entry in results.items():
        runs = {k: best(v) for k, v in entry["runs"].items()}
        kdh, bare = runs.get("kdh"), runs.get("bare")
        any_run = next(iter(runs.values()))
        fpt = flops_per_token(any_run["models"])
        n_timed = entry["steps"] - entry["warmup"]
        lines += [f"## Vocabulary {vocab:,}", "",
                  (f"{entry['steps']} steps per variant, the first {entry['warmup']} not timed ({n_timed} timed, "
                  f"{n_timed * BATCH * BLOCK:,} tokens); {len(next(iter(entry['runs'].values())))} repeat(s) per variant."),
                  "",
                  ("| variant | tokens/s | (each repeat) | ms/step mean | median | vs bare | peak RSS | RSS after "
                  "loading models | peak − after loading | model GFLOP/s | of matmul peak |"),
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in runs.items():
            durations = sorted(r["step_durations"][r["warmup"]:])
            median = durations[len(durations) // 2]
            gflops = r["tokens_per_s"] * fpt["model"] / 1e9
            lines.append(
                f"| {name} | {r['tokens_per_s']:,.0f} | " + " / ".join(f"{x['tokens_per_s']:,.0f}" for x in entry["runs"][name])
                + f" | {1000 * r['step_seconds']:,.1f} | {1000 * median:,.1f} | "
                + (f"{r['tokens_per_s'] / bare['tokens_per_s']:.2f}×" if bare else "-")
                + f" | {r['peak_loop'] / MIB:,.0f} MiB | {r['rss_after_models'] / MIB:,.0f} MiB "
                f"| {(r['peak_loop'] - r['rss_after_models']) / MIB:,.0f} MiB | {gflops:.1f} "
                f"| {100 * gflops * 1e9 / peak['peak_flops']:.0f}% |")
        s, t = any_run["models"]["student"], any_run["models"]["teacher"]
        lines += ["", (f"FLOPs per token: 6 × {s['n_matmul']:,} (student blocks + head, forward and backward) + "
                  f"2 × {t['n_matmul']:,} (teacher forward, blocks + head) = **{fpt['model'] / 1e6:.2f} MFLOP** "
                  f"(N counts the parameters that multiply: the tied embedding once, as the head). Not counted: "
                  f"attention scores/values, {fpt['attention'] / 1e6:.2f} MFLOP; the fused loss's recomputation of "
                  f"both heads in the backward (activation checkpointing: bare-fused and the divergences other than forward KL; kdh's forward-KL path recomputes nothing), "
                  f"{fpt['fused_recompute'] / 1e6:.2f} MFLOP."), ""]
        if kdh:
            setup = kdh.get("result_setup_seconds")
            o = overhead(kdh)
            lines += [
                f"kdh as `distill()` reports it (all {kdh['steps']} steps, warm-up and the final checkpoint included): "
                f"tokens_per_s {kdh['result_tokens_per_s']:,.0f}, seconds {kdh['result_seconds']:.1f}, ddk_seconds "
                f"{kdh['result_ddk_seconds']:.2f} ({100 * kdh['result_ddk_seconds'] / kdh['result_seconds']:.1f}% of "
                f"seconds)" + (f", setup_seconds {setup:.1f}" if setup is not None else "")
                + f". The final checkpoint, inside `seconds`, took {kdh['final_checkpoint_seconds']:.2f} s. One "
                f"mixture update (the student's validation perplexities on 4 × 32 blocks, timed "
                + ("in the loop" if o["ddk_in_window"] else "before the loop, where distill() runs the same pass") + ") costs "
                f"{o['update_seconds']:.2f} s, i.e. {100 * o['ddk_share']:.1f}% of a step at one update per "
                f"{INTERVAL} steps" + ("" if o["ddk_in_window"] else " (none falls inside the timed window)")
                + f". RSS at the loop's start {kdh['rss_loop_start'] / MIB:,.0f} MiB.",
                "",
                (f"kdh's step with DDK amortised: arithmetic (teacher forward, student forward + loss + backward, clip, "
                f"optimizer) **{100 * o['arithmetic_share']:.1f}%**; data sampling + logging "
                f"{100 * o['data_logging_share']:.2f}%; DDK {100 * o['ddk_share']:.1f}%; other (loss.item(), the "
                f"teacher-hidden clone, tqdm, scheduler bookkeeping) {100 * o['other_share']:.1f}%."),
                "",
            ]
        names: list[str] = []
        for r in runs.values():
            names += [n for n in r["breakdown"] if n not in names]
        lines += ["Where a step's time goes (timed window of the fastest repeat; ms per step, share):", "",
                  "| phase | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
        for n in names:
            cells = []
            for r in runs.values():
                v = r["breakdown"].get(n)
                cells.append("-" if v is None else f"{1000 * v / n_timed:,.1f} ({100 * v / r['window_seconds']:.1f}%)")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("| **step** | " + " | ".join(f"**{1000 * r['step_seconds']:,.1f}**" for r in runs.values()) + " |")
        lines.append("")
    lines += FINDINGS
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


# Written by hand; rerunning refreshes the tables above but not this text.
FINDINGS = """## What changed after the first run (2026-11-23)

The first run of this script (kdh at commit 8a09574) measured kdh at 12,844 tokens/s at V = 1024
(0.84× the bare loop) and 487 tokens/s at V = 50,000 (0.76×), and found two causes:

- **Recomputation.** The fused loss ran each chunk under activation checkpointing, so the backward ran
  the student head *and the teacher head* and every V-sized softmax again: kdh's backward took 57 ms
  against the bare loop's 38 ms at V = 1024; at 50k the recomputation added 56% to the model's FLOPs.
- **The allocator.** With chunks of 256 positions every V-sized temporary at 50k was 51 MB, above
  glibc's mmap threshold (at most 32 MiB), so each was mapped fresh and faulted in zeroed pages on every
  use: the loss alone spent 4.5 s of system CPU per call, as much as its arithmetic.

The fix (`distiller/losses.py`): for CE + forward KL (DDK's loss, and CE alone) each chunk's gradient
is formed in the forward, as Liger's fused linear cross-entropy does, from the closed form
softmax(z) − onehot(y) + (γ/τ)·(softmax(z/τ) − p_τ), and multiplied back through the head at once, so
nothing V-sized waits for the backward and nothing is recomputed; the other divergences keep the
checkpointed path. Chunks are also capped at 24 MiB of V-sized buffer (125 positions at 50k). The loss
alone, forward and backward, 8 × 255 positions, one thread: 0.101 → 0.066 s at V = 1024 and 8.4 → 2.6 s
at V = 50,000. The tables above are after the fix; the old `kdh-chunk128` variant (chunk size alone)
can still be run with `--variants-large kdh kdh-chunk128 bare`.
""".splitlines()


def profile(vocab: int, steps: int) -> None:
    """kdh's loop under torch.profiler (ops by self CPU time) and cProfile (Python functions), from
    step 3 on; then the loss alone, fwd + bwd, in fresh subprocesses (user/system CPU seconds)."""
    import cProfile
    import pstats

    import torch

    from distiller import trainer

    spec = _specs(vocab, steps, 0, in_process=True)
    original = trainer.DomainSampler.next_batch
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    cp = cProfile.Profile()
    state = {"n": 0}

    def next_batch(self, *args, **kwargs):  # skip set-up and the first two steps
        state["n"] += 1
        if state["n"] == 3:
            prof.__enter__()
            cp.enable()
        return original(self, *args, **kwargs)

    trainer.DomainSampler.next_batch = next_batch
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    child_kdh_plain(spec)
    cp.disable()
    prof.__exit__(None, None, None)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(f"kdh, V = {vocab:,}, {steps} steps (profiled from step 3); whole run: user {after.ru_utime - cpu.ru_utime:.1f} s, "
          f"system {after.ru_stime - cpu.ru_stime:.1f} s")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    pstats.Stats(cp).sort_stats("tottime").print_stats(15)
    print(f"The loss alone, forward + backward, B×T = {BATCH}×{BLOCK}, demo widths, V = {vocab:,} (fresh process each; "
          f"mean of 3 after one warm-up):")
    for loss, chunk in (("reference", None), ("fused", 256), ("fused", 128), ("fused", 64), ("grad-in-forward", 256), ("grad-in-forward", 128)):
        r = run_child({"kind": "loss", "vocab": vocab, "loss": loss, "chunk": chunk})
        print(f"  {loss:>15} chunk {chunk or '-'!s:>4}: {r['seconds']:.2f} s/call (user {r['user']:.2f} s, system "
              f"{r['system']:.2f} s per call), |Δloss| vs reference "
              f"{r['loss_diff']:.1e}, max |Δgrad| {r['grad_diff']:.1e}", flush=True)


def child_loss(spec: dict) -> dict:
    """One loss variant, forward + backward on random demo-width inputs (what the step's loss does)."""
    import torch

    from distiller.losses import distillation_loss, distillation_loss_reference

    vocab, kind, chunk = spec["vocab"], spec["loss"], spec["chunk"]
    torch.manual_seed(0)
    n = BATCH * BLOCK
    hidden = torch.randn(n, 64, requires_grad=True)
    weight = (0.02 * torch.randn(vocab, 64)).requires_grad_()
    t_hidden, t_weight = torch.randn(n, 128), 0.02 * torch.randn(vocab, 128)
    labels = torch.randint(0, vocab, (n,))
    grad_in_forward = _grad_in_forward()

    def call(kind):
        if kind == "reference":
            return distillation_loss_reference(hidden @ weight.T, t_hidden @ t_weight.T, labels, kd_weight=KD_WEIGHT)[0]
        if kind == "fused":
            return distillation_loss(hidden, weight, t_hidden, t_weight, labels, kd_weight=KD_WEIGHT, chunk_size=chunk)[0]
        return grad_in_forward.apply(hidden, weight, t_hidden, t_weight, labels, KD_WEIGHT, chunk)

    def step(kind):
        hidden.grad = weight.grad = None
        loss = call(kind)
        loss.backward()
        return loss.detach(), hidden.grad.clone(), weight.grad.clone()

    if vocab <= 4096:  # check the variant against the reference (which is big at 50k, so only here)
        ref = step("reference")
    step(kind)  # warm-up
    before, usage = _peak(), resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for _ in range(3):
        loss, grad_h, grad_w = step(kind)
    seconds = (time.perf_counter() - started) / 3
    after = resource.getrusage(resource.RUSAGE_SELF)
    diffs = (float("nan"), float("nan"))
    if vocab <= 4096:
        diffs = (float((loss - ref[0]).abs()), max(float((grad_h - ref[1]).abs().max()), float((grad_w - ref[2]).abs().max())))
    return {"seconds": seconds, "user": (after.ru_utime - usage.ru_utime) / 3, "system": (after.ru_stime - usage.ru_stime) / 3,
            "peak_delta": _peak() - before, "loss_diff": diffs[0], "grad_diff": diffs[1]}


def _grad_in_forward():
    """A sketch of what kdh's fused loss could do instead (not used by kdh): CE + γ·KL(p‖q) at T = 1,
    whose gradient with respect to the student's logits is (1 + γ)·q − γ·p − onehot(y) per row, so each
    chunk's gradients for the hidden states and the head are formed in the forward (as Liger's fused
    linear cross-entropy does) and nothing is recomputed in the backward: no second student-head matmul,
    no second teacher-head matmul, no saved V-sized tensors."""
    import torch

    class GradInForward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, t_hidden, t_weight, labels, gamma, chunk):
            n = hidden.shape[0]
            grad_h, grad_w = torch.empty_like(hidden), torch.zeros_like(weight)
            total = hidden.new_zeros((), dtype=torch.float64)
            for s in range(0, n, chunk):
                h, y = hidden[s:s + chunk], labels[s:s + chunk]
                log_q = torch.log_softmax(h @ weight.T, dim=-1)
                log_p = torch.log_softmax(t_hidden[s:s + chunk] @ t_weight.T, dim=-1)
                p = log_p.exp()
                ce = -log_q.gather(1, y[:, None]).sum()
                kd = log_p.sub_(log_q).mul_(p).sum()  # Σ p (log p − log q), in log_p's buffer
                total += (ce + gamma * kd).double()
                g = log_q.exp_().mul_(1 + gamma).sub_(p.mul_(gamma))  # (1 + γ) q − γ p, in place
                g[torch.arange(len(y)), y] -= 1
                g.div_(n)
                grad_h[s:s + chunk] = g @ weight
                grad_w.addmm_(g.T, h)
            ctx.save_for_backward(grad_h, grad_w)
            return (total / n).float()

        @staticmethod
        def backward(ctx, grad_out):
            grad_h, grad_w = ctx.saved_tensors
            return grad_h * grad_out, grad_w * grad_out, None, None, None, None, None

    return GradInForward


def child_kdh_plain(spec: dict) -> None:
    from distiller import trainer

    world = _world()
    output = Path(tempfile.mkdtemp(prefix="kdh-distill-step-"))
    try:
        config = trainer.DistillConfig(teacher=spec["teacher"], student=spec["student"], output_dir=str(output),
                                       steps=spec["steps"], batch_size=BATCH, block_size=BLOCK, kd_weight=KD_WEIGHT,
                                       mixture="ddk", interval=INTERVAL, chunk_size=CHUNK, save_every=10 ** 9,
                                       progress=False, seed=0)
        trainer.distill(config, {d: (world.domain_file(d, "train.jsonl"), world.domain_file(d, "validation.jsonl"))
                                 for d in DOMAINS})
    finally:
        shutil.rmtree(output, ignore_errors=True)


_BUILT: dict = {}


def _specs(vocab: int, steps: int, warmup: int, in_process: bool = False) -> dict:
    """The models for ``vocab``: the demo's own at 1024, else random-initialised ones built once
    (in a subprocess, unless ``in_process``) into a temporary folder."""
    world = _world()
    if vocab == world.manifest["recipe"]["vocab_size"]:
        teacher, student = world.teacher_dir, world.student_dir
    else:
        if vocab not in _BUILT:
            folder = Path(tempfile.mkdtemp(prefix=f"kdh-vocab{vocab}-"))
            _BUILT[vocab] = folder
            spec = {"kind": "build", "vocab": vocab, "dir": str(folder)}
            child_build(spec) if in_process else run_child(spec)
        teacher, student = _BUILT[vocab] / "teacher", _BUILT[vocab] / "student"
    return {"vocab": vocab, "teacher": str(teacher), "student": str(student), "steps": steps, "warmup": warmup}


def main() -> None:
    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, nargs="+", default=[1024, 50_000])
    parser.add_argument("--variants", nargs="+", default=list(SMALL_VARIANTS), choices=VARIANTS,
                        help="variants at the demo vocabulary")
    parser.add_argument("--variants-large", nargs="+", default=list(LARGE_VARIANTS), choices=VARIANTS,
                        help="variants above V = 4096")
    parser.add_argument("--render", metavar="JSON", help="rewrite --out from a saved results file, measuring nothing")
    parser.add_argument("--steps", type=int, default=60, help="steps per variant at the demo vocabulary")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="repeats per variant at the demo vocabulary")
    parser.add_argument("--steps-large", type=int, default=20, help="steps per variant above V = 4096 (~4 s each)")
    parser.add_argument("--warmup-large", type=int, default=4)
    parser.add_argument("--repeats-large", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "docs" / "distill-step.md"))
    parser.add_argument("--profile", type=int, metavar="VOCAB", help="profile kdh's loop and the loss at VOCAB instead")
    parser.add_argument("--profile-steps", type=int, default=8)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        spec = json.loads(args.child)
        # Another bench (bench/realistic.py) may run these children at its own shapes and DDK interval.
        global BATCH, BLOCK, INTERVAL
        BATCH, BLOCK, INTERVAL = spec.get("batch", BATCH), spec.get("block", BLOCK), spec.get("interval", INTERVAL)
        result = {"build": child_build, "matmul": child_matmul, "kdh": child_kdh, "kdh-chunk128": child_kdh,
                  "loss": child_loss,
                  "bare": lambda s: child_bare(s, fused=False),
                  "bare-fused": lambda s: child_bare(s, fused=True),
                  "trl-gkd": child_trl, "trl-gkd-bf16": lambda s: child_trl({**s, "bf16": True})}[spec["kind"]](spec)
        print(json.dumps(result))
        return
    try:
        if args.profile:
            profile(args.profile, steps=args.profile_steps)
            return
        if args.render:
            saved = json.loads(Path(args.render).read_text())
            results = {int(v): e for v, e in saved["results"].items()}
            print(write_doc(Path(args.out), saved["argv"], saved["machine"], saved["peaks"], results, saved["wall"],
                            saved["date"]))
            return
        started = time.perf_counter()
        import torch

        machine = {"cpus": os.cpu_count(), "cpu": platform.machine(), "torch": torch.__version__,
                   "threads": torch.get_num_threads(), "python": platform.python_version(),
                   "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30}
        try:
            with open("/proc/cpuinfo") as f:
                machine["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
        except (OSError, StopIteration):
            pass
        peaks = [run_child({"kind": "matmul"})]
        print(f"fp32 matmul peak: {peaks[0]['peak_flops'] / 1e9:.1f} GFLOP/s ({peaks[0]['threads']} threads)", flush=True)
        results: dict = {}
        for vocab in args.vocab:
            large = vocab > 4096
            steps, warmup = (args.steps_large, args.warmup_large) if large else (args.steps, args.warmup)
            repeats = args.repeats_large if large else args.repeats
            spec = _specs(vocab, steps, warmup)
            variants = args.variants_large if large else args.variants
            entry = results[vocab] = {"steps": steps, "warmup": warmup, "runs": {v: [] for v in variants}}
            for _ in range(repeats):
                for variant in variants:
                    r = run_child({**spec, "kind": variant, **({"chunk": 128} if variant == "kdh-chunk128" else {})})
                    entry["runs"][variant].append(r)
                    print(f"V={vocab:>6} {variant:>10}: {r['tokens_per_s']:8,.0f} tok/s  {r['step_seconds'] * 1000:7.1f} "
                          f"ms/step  peak {r['peak_loop'] / MIB:6,.0f} MiB (after models {r['rss_after_models'] / MIB:5,.0f})"
                          f"  [{r['process_seconds']:.0f} s]", flush=True)
        peaks.append(run_child({"kind": "matmul"}))
        saved = _results_file(Path(args.out))
        saved.write_text(json.dumps({"argv": sys.argv[1:], "machine": machine, "peaks": peaks, "results": results,
                                     "wall": time.perf_counter() - started, "date": time.strftime("%Y-%m-%d")}))
        print(f"results: {saved}", file=sys.stderr)
        text = write_doc(Path(args.out), sys.argv[1:], machine, peaks, results, time.perf_counter() - started)
        print(text)
        print(json.dumps({str(v): {k: [{x: y for x, y in r.items() if x != "step_durations"} for r in rs]
                                   for k, rs in e["runs"].items()} for v, e in results.items()}), file=sys.stderr)
    finally:
        for folder in _BUILT.values():
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
