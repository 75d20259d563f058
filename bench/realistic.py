"""kdh at a realistic size: a ≈ 124M-parameter student distilled from a teacher ≈ 4× its size, at a
50k vocabulary (GPT-2's tokenizer) and at 152k (Qwen2's): kdh's step against TRL's GKD trainer and a
bare PyTorch loop (tokens/s, peak RSS, MFU), and each model's scoring by kdh against plain lm-eval.

    python bench/realistic.py                       # everything; writes docs/bench/realistic.json (~40 min, 2 cores)
    python bench/realistic.py --vocab 50k --variants kdh bare --steps 4 --warmup 1 --no-scoring   # a quicker look

The models (random-initialised, tests/families.py, around the tokenizer fixtures; built once into the
kdh home, ~5 GB):

- 50k: student GPT-2 small's shape (12 layers × 768, 12 heads, tied; 124M); teacher GPT-2-shaped,
  24 × 1280, 20 heads (537M, 4.3×).
- 152k: student Qwen2-shaped, 12 × 512, 8 heads (4 key/value heads), tied (125M); teacher Qwen2-shaped,
  24 × 1024, 16 heads (532M, 4.3×). At 152k entries the embedding is 62% of the student.

The step: the variants of bench/distill_step.py (its children, run here at this bench's shapes and on
the tiny demo world's text, each in a fresh process): **kdh** is ``distill()`` end to end from the token store (DDK sampler, fused
chunked loss, Accelerate; no mixture update inside the timed steps: at this cost per step K would be
hundreds of steps), **bare** a nanoGPT-style loop over materialised logits, **trl-gkd** TRL's
``GKDTrainer`` as supervised forward KL (bench/trl_gkd.py). Batch 4 × 256 tokens, fp32, the steps
after the warm-up timed. Peak RSS: the kernel's mark reset once both models are loaded
(transformers holds a model's weights twice while loading it), so it is the training's own. MFU: achieved FLOP/s (6·N_student + 2·N_teacher per token, N the parameters
in matmuls, plus attention) over the measured fp32 matmul peak of the same cores.

The scoring: ``harness.scoring.evaluate_model`` (what `kdh eval` runs per model; kdh's BoundedHFLM)
against the same call with lm-eval's own HFLM (bench/scoring_memory.py's children), on the default
suite's slices over the tiny demo world, ``--limit`` documents a slice, batch 4: seconds, peak RSS
and the largest difference between their scores.

Run it on an otherwise idle machine: with 2 cores a second busy process slows torch several-fold.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "bench" / "realistic.json"
FIXTURES = ROOT / "tests" / "fixtures" / "tokenizers"
BATCH, BLOCK = 4, 256
PAIRS = {  # vocabulary: {role: (family, tokenizer fixture, layers, hidden, heads)}
    "50k": {"student": ("gpt2", "gpt2", 12, 768, 12), "teacher": ("gpt2", "gpt2", 24, 1280, 20)},
    "152k": {"student": ("qwen2", "qwen2", 12, 512, 8), "teacher": ("qwen2", "qwen2", 24, 1024, 16)},
}
VARIANTS = ("kdh", "bare", "trl-gkd")
GIB = 2 ** 30


def build(models: Path, vocab: str) -> dict[str, Path]:
    """The pair's two models, built once (tied embeddings, context 1024)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from families import build_model

    built = {}
    for role, (family, tokenizer, layers, hidden, heads) in PAIRS[vocab].items():
        folder = models / f"{vocab}-{role}"
        if not (folder / "model.safetensors").is_file():
            print(f"[realistic] building the {vocab} {role} ({family}, {layers} × {hidden})", flush=True)
            build_model(family, FIXTURES / tokenizer, folder, layers=layers, hidden=hidden, heads=heads,
                        context=1024, tie_embeddings=True, seed=1 if role == "teacher" else 2)
        built[role] = folder
    return built


def child(script: str, *args: str) -> dict:
    """One measurement in a fresh process (its peak RSS is its own): the JSON its last line prints."""
    done = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True,
                          env={"KDH_BENCH_WORLD": "tiny", "KDH_DEMO_SIZE": "tiny", **os.environ,
                               "TRL_EXPERIMENTAL_SILENCE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{script} {args[:2]} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def step(variant: str, vocab: str, models: dict[str, Path], steps: int, warmup: int) -> dict:
    size = json.loads((models["student"] / "config.json").read_text())["vocab_size"]
    spec = {"kind": variant, "vocab": size, "teacher": str(models["teacher"]), "student": str(models["student"]),
            "steps": steps, "warmup": warmup, "batch": BATCH, "block": BLOCK, "interval": 10 ** 6, "val_blocks": 2}
    r = child("bench/distill_step.py", "--child", json.dumps(spec))
    return {k: v for k, v in r.items() if k not in ("breakdown",)} | {"breakdown": r.get("breakdown", {})}


def mfu(result: dict, peak_flops: float) -> dict:
    """Achieved FLOP/s per token counted as bench/distill_step.py counts it, and its share of the peak."""
    import bench.distill_step as ds

    ds.BLOCK = BLOCK
    flops = ds.flops_per_token(result["models"])
    per_token = flops["model"] + flops["attention"]
    achieved = per_token * result["tokens_per_s"]
    return {"flops_per_token": per_token, "achieved_flops": achieved, "mfu": achieved / peak_flops}


def scoring(model: Path, limit: int) -> dict:
    """kdh's scorer (after) against lm-eval's own HFLM (before) on one model."""
    runs = {variant: child("bench/scoring_memory.py", "--child", variant, "--model", str(model), "--limit",
                           str(limit), "--batch-size", "4") for variant in ("before", "after")}
    before, after = runs["before"], runs["after"]
    diffs = [abs(before[kind][k] - after[kind][k]) for kind in ("rows", "samples") for k in before[kind]]
    return {"parameters": after["parameters"], "max_abs_difference": max(diffs), "values_compared": len(diffs),
            **{f"{v}_{k}": runs[v][key] for v in runs for k, key in (("seconds", "scoring_seconds"),
                                                                      ("peak_rss_kib", "peak_rss_kib"))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--limit", type=int, default=8, help="documents per slice when scoring")
    parser.add_argument("--no-scoring", action="store_true")
    parser.add_argument("--models", type=Path, help="where the built models are kept (default: the kdh home)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from harness.home import configure_environment, kdh_home

    configure_environment()
    folder = args.models or kdh_home() / "bench" / "realistic-models"
    started = time.perf_counter()
    import torch

    peak = child("bench/distill_step.py", "--child", json.dumps({"kind": "matmul"}))
    print(f"fp32 matmul peak: {peak['peak_flops'] / 1e9:.0f} GFLOP/s", flush=True)
    report = {"machine": {"cpus": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__,
                          "load_average_at_start": os.getloadavg()[0]},
              "batch": BATCH, "block": BLOCK, "steps": args.steps, "warmup": args.warmup, "peak_flops": peak["peak_flops"],
              "command": " ".join(["python bench/realistic.py", *sys.argv[1:]]), "when": time.strftime("%Y-%m-%d"),
              "pairs": {}}
    for vocab in args.vocab:
        models = build(folder, vocab)
        entry = report["pairs"][vocab] = {"shapes": {r: dict(zip(("family", "tokenizer", "layers", "hidden", "heads"), s))
                                                     for r, s in PAIRS[vocab].items()}, "steps": {}, "scoring": {}}
        for variant in args.variants:
            r = step(variant, vocab, models, args.steps, args.warmup)
            r.update(mfu(r, peak["peak_flops"]))
            r["load_average"] = os.getloadavg()[0]
            entry["steps"][variant] = r
            print(f"{vocab:>5} {variant:>8}: {r['tokens_per_s']:7.1f} tok/s  {r['step_seconds']:6.1f} s/step  "
                  f"peak {r['peak_after_load'] / GIB:5.2f} GiB after loading ({r['peak_loop'] / GIB:5.2f} with it)  "
                  f"MFU {100 * r['mfu']:4.1f}%  (load {r['load_average']:.1f})",
                  flush=True)
        if not args.no_scoring:
            for role, model in models.items():
                s = entry["scoring"][role] = scoring(model, args.limit)
                print(f"{vocab:>5} scoring {role}: kdh {s['after_seconds']:.0f} s {s['after_peak_rss_kib'] / 2**20:.2f} GiB"
                      f" | lm-eval {s['before_seconds']:.0f} s {s['before_peak_rss_kib'] / 2**20:.2f} GiB | max diff "
                      f"{s['max_abs_difference']:.2g}", flush=True)
    report["seconds"] = time.perf_counter() - started
    saved = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if saved.get("pairs") and set(args.vocab) != set(PAIRS):  # a partial run keeps the other pair's figures
        report["pairs"] = {**saved["pairs"], **report["pairs"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out} in {report['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
