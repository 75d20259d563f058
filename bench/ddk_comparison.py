"""The paper's comparison in miniature: CPT, uniform KD, DDK without smoothing and DDK on the demo world.

Equal steps (so equal token budgets), batch, block, learning rate and seeds for every arm; each
final student is scored by its student/teacher perplexity ratio per domain on the held-out test text
(documents neither the training nor DDK's validation ever saw), and on the default suite's benchmark
slices through lm-eval (`evaluate_model`). Writes docs/bench/ddk.json; `python -m bench` renders it.

    python bench/ddk_comparison.py --steps 200 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from harness.home import configure_environment, kdh_home

ROOT = Path(__file__).resolve().parent.parent


ARMS = {  # name: (kd_weight, mixture) — the baselines are settings of one loop
    "CPT": (0.0, "natural"),
    "KD (uniform)": (0.2, "uniform"),
    "DDK w/o smoothing": (0.2, "ddk-no-smoothing"),
    "DDK": (0.2, "ddk"),
}


def held_out_ratios(student_dir: Path, teacher_dir: Path, world, block: int) -> dict[str, float]:
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distiller.data import pack_blocks, read_texts
    from distiller.measure import domain_perplexities

    accelerator = Accelerator(cpu=True)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    test = {d: pack_blocks(read_texts(world.domain_file(d, "test_ppl.jsonl")), tokenizer, block,
                           tokenizer.eos_token_id, domain=d)[:64] for d in ("code", "prose", "arithmetic", "records")}
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    student = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    ppl_t = domain_perplexities(teacher, test, accelerator, chunk_size=1024)
    ppl_s = domain_perplexities(student, test, accelerator, chunk_size=1024)
    return {d: ppl_s[d] / ppl_t[d] for d in test}


def slice_scores(model_dir: Path, suite, limit: int) -> dict[str, float]:
    """The model's primary metric on every slice of the suite (lm-eval through kdh, no cache)."""
    from harness.models import ModelRef
    from harness.scoring import ScoringOptions, evaluate_model

    rows, _, _ = evaluate_model(ModelRef.parse(f"m={model_dir}"), suite, ScoringOptions(limit=limit, use_cache=False))
    return {f"{r['domain']}/{r['slice']}": r["value"] for r in rows if r["primary"]}


def main() -> None:
    configure_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--interval", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--limit", type=int, default=120, help="documents per benchmark slice")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "ddk.json"))
    args = parser.parse_args()

    from harness.inputs import open_suite
    from harness.demo import ensure_world
    from distiller.trainer import DistillConfig, distill

    world = ensure_world(kdh_home(), "default", progress=False)
    suite = open_suite(str(ROOT / "suites" / "default.yaml"))
    import sys

    sys.path.insert(0, str(ROOT))  # run as a script: bench/ is not on the path as a package
    from bench.distill_step import world_store

    store = world_store(world, str(world.student_dir))  # the demo world's corpora as the student's token store
    work = kdh_home() / "bench" / "ddk-comparison"
    result = {"args": vars(args), "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
              "teacher": {"slices": slice_scores(world.teacher_dir, suite, args.limit)},
              "initial": {"ratios": held_out_ratios(world.student_dir, world.teacher_dir, world, args.block_size),
                          "slices": slice_scores(world.student_dir, suite, args.limit)},
              "arms": {name: [] for name in ARMS}}
    for seed in args.seeds:
        for name, (kd_weight, mixture) in ARMS.items():
            config = DistillConfig(teacher=str(world.teacher_dir), student=str(world.student_dir),
                                   output_dir=str(work / f"{mixture}-kd{kd_weight}-seed{seed}"), steps=args.steps,
                                   batch_size=args.batch_size, block_size=args.block_size, lr=args.lr,
                                   kd_weight=kd_weight, mixture=mixture, interval=args.interval, seed=seed,
                                   save_every=args.steps, progress=False)
            started = time.perf_counter()
            run = distill(config, store)
            entry = {"seed": seed, "seconds": time.perf_counter() - started, "tokens_per_s": run.tokens_per_s,
                     "ddk_share": run.ddk_seconds / run.seconds, "setup_seconds": run.setup_seconds,
                     "history": run.history,
                     "ratios": held_out_ratios(run.student_dir, world.teacher_dir, world, args.block_size),
                     "slices": slice_scores(run.student_dir, suite, args.limit)}
            result["arms"][name].append(entry)
            print(f"seed {seed} {name}: " + json.dumps({d: round(r, 3) for d, r in entry["ratios"].items()}), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
