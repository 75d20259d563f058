"""Seconds per training step of the cross-vocabulary ``--kd`` modes against plain kd, at a real
vocabulary (Qwen2's 151,646 tokens), on random-initialised models built around the tokenizer fixtures.

    python bench/cross_vocab.py --label after          # kd, uld, dskd-cma; adds "after" to docs/bench/cross-vocab.json
    python bench/cross_vocab.py --profile uld          # torch.profiler of a few steps of one mode (printed only)

The pairs (docs/families.md): teacher Qwen2-shaped, 4 layers × 256 hidden, Qwen2 tokenizer;
kd: a Qwen2-tokenizer student (Qwen2-shaped, 2 × 128); uld and dskd-cma: a GPT-2-tokenizer student
(GPT-2-shaped, 2 × 128). Batch 4 × block 128, the tiny demo world's text, the student's token store.

Each mode runs in a fresh subprocess (its peak RSS is its own) with the trainer's own parts
(``trainer.load_models``, ``sources.domain_data``, ``DomainSampler``, ``step.Step``, the optimizer):
one step is the sampler's batch (for two tokenizers: the teacher's re-tokenisation, pairs.py), the
forwards and the loss, backward, clip and AdamW. Reported: the median of the timed steps after the
warm-up, per phase, and the process's peak RSS. No DDK measurement, no checkpoint: the step alone.
Run it on an otherwise idle machine; with 2 cores a second busy process slows torch several-fold.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "tokenizers"
OUT = ROOT / "docs" / "bench" / "cross-vocab.json"
BATCH, BLOCK = 4, 128
MODES = {  # mode: (student folder name, --kd)
    "kd": ("student-qwen2", "kd"),
    "uld": ("student-gpt2", "uld"),
    "dskd-cma": ("student-gpt2", "dskd-cma"),
}
MODELS = {  # folder: (family, tokenizer fixture, layers, hidden)
    "teacher-qwen2": ("qwen2", "qwen2", 4, 256),
    "student-qwen2": ("qwen2", "qwen2", 2, 128),
    "student-gpt2": ("gpt2", "gpt2", 2, 128),
}


def _world():
    from harness.demo import ensure_world
    from harness.home import configure_environment, kdh_home

    configure_environment()
    return ensure_world(kdh_home(), size="tiny", progress=False)


def build_models(folder: Path) -> None:
    """The three models (tests/families.py's builder), once per folder."""
    for name, (family, tokenizer, layers, hidden) in MODELS.items():
        if not (folder / name / "config.json").is_file():
            sys.path.insert(0, str(ROOT / "tests"))
            from families import build_model

            built = build_model(family, FIXTURES / tokenizer, folder / name, layers=layers, hidden=hidden)
            assert Path(built) == folder / name, built


def store_of(student_dir: Path) -> Path:
    from transformers import AutoTokenizer

    from distiller.prepare import prepare
    from harness.home import kdh_home

    world = _world()
    corpora = {d: {"train": [world.domain_file(d, "train.jsonl")],
                   "validation": [world.domain_file(d, "validation.jsonl")]}
               for d in ("code", "prose", "arithmetic", "records")}
    return prepare(corpora, AutoTokenizer.from_pretrained(student_dir), root=kdh_home() / "stores").root


def child(mode: str, models: Path, steps: int, warmup: int, profile: bool) -> dict:
    """``steps`` training steps of ``mode`` with the trainer's parts; per-step phase times."""
    import torch
    from accelerate import Accelerator

    from distiller import trainer
    from distiller.data import DomainSampler
    from distiller.sources import domain_data
    from distiller.step import Step, make_projectors, shared_tokens
    from distiller.store import TokenStore

    student_name, kd = MODES[mode]
    store = TokenStore(store_of(models / student_name))
    torch.manual_seed(0)
    config = trainer.DistillConfig(teacher=str(models / "teacher-qwen2"), student=str(models / student_name),
                                   output_dir="unused", batch_size=BATCH, block_size=BLOCK, kd=kd, progress=False)
    accelerator = Accelerator(cpu=True)
    loaded = trainer.load_models(config, accelerator.device)
    data = domain_data(store, list(store.domains), loaded.tokenizer, loaded.teacher_tokenizer,
                       same_vocab=loaded.same_vocab, block=loaded.block,
                       teacher_context=loaded.teacher.config.max_position_embeddings, val_blocks=1,
                       accelerator=accelerator, chunk_size=config.chunk_size)
    pairs = None if loaded.same_vocab else shared_tokens(loaded.tokenizer, loaded.teacher_tokenizer)
    projectors = make_projectors(kd, config.kd_weight, loaded.student, loaded.teacher, pairs)
    optimizer, _ = trainer._optimizer(config, loaded.student, projectors)
    sampler = DomainSampler(data.rows, {d: 1.0 for d in data.rows}, seed=0, collate=data.collate)
    step = Step(kd, config.kd_weight, loaded.student, loaded.student, loaded.teacher, projectors,
                paired=not loaded.same_vocab, student_width=loaded.block + 1,
                teacher_pad_id=loaded.teacher_tokenizer.eos_token_id,
                options={"kind": config.divergence, "temperature": config.temperature, "chunk_size": config.chunk_size})
    trained = list(loaded.student.parameters()) + (list(projectors.parameters()) if projectors is not None else [])
    loaded.student.train()
    phases, losses = [], []
    profiler = None
    if profile:
        profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
    for i in range(steps):
        if profiler is not None and i == warmup:
            profiler.start()
        times = {}
        started = time.perf_counter()
        rows, _ = sampler.next_batch(BATCH)
        times["data"] = time.perf_counter() - started
        mark = time.perf_counter()
        loss, _ce, _kd = step(rows)
        times["forward + loss"] = time.perf_counter() - mark
        mark = time.perf_counter()
        loss.backward()
        times["backward"] = time.perf_counter() - mark
        mark = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(trained, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times["optimizer"] = time.perf_counter() - mark
        times["step"] = time.perf_counter() - started
        phases.append(times)
        losses.append(loss.item())
    if profiler is not None:
        profiler.stop()
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)
    timed = phases[warmup:]
    return {
        "mode": mode, "teacher": "qwen2 4x256 (Qwen2 tokenizer)", "student": student_name,
        "teacher_vocab": loaded.teacher.config.vocab_size, "student_vocab": loaded.student.config.vocab_size,
        "batch": BATCH, "block": loaded.block, "threads": torch.get_num_threads(), "steps": steps, "warmup": warmup,
        "step_s": statistics.median(p["step"] for p in timed),
        "phases_s": {k: statistics.median(p[k] for p in timed) for k in timed[0] if k != "step"},
        "step_durations_s": [round(p["step"], 4) for p in phases],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "losses": losses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="after", help="the key these figures go under (before, after, ...)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--models", type=Path, default=None, help="where the built models are kept")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--profile", default=None, metavar="MODE", help="profile one mode; print, write nothing")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from harness.home import configure_environment, kdh_home

    configure_environment()
    models = args.models or kdh_home() / "bench" / "cross-vocab-models"
    if args.child:
        print(json.dumps(child(args.child, models, args.steps, args.warmup, args.profile is not None)))
        return
    build_models(models)
    modes = [args.profile] if args.profile else args.modes.split(",")
    results = {}
    for mode in modes:
        command = [sys.executable, __file__, "--child", mode, "--models", str(models), "--steps", str(args.steps),
                   "--warmup", str(args.warmup)] + (["--profile", mode] if args.profile else [])
        done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        r = results[mode]
        print(f"{mode:9s} {r['step_s']:7.2f} s/step  peak {r['peak_rss_mb']:7.0f} MB  "
              + "  ".join(f"{k} {v:.2f}" for k, v in r["phases_s"].items()), flush=True)
    if args.profile:
        return
    for mode, r in results.items():
        r["vs_kd"] = r["step_s"] / results["kd"]["step_s"] if "kd" in results else None
    saved = json.loads(args.out.read_text()) if args.out.is_file() else {}
    saved[args.label] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "when": time.strftime("%Y-%m-%d"),
                         "command": f"python bench/cross_vocab.py --label {args.label}", "modes": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(saved, indent=1) + "\n")
    print(f"wrote {args.out} ({args.label})")


if __name__ == "__main__":
    main()
