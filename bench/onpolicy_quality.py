"""Does on-policy distillation make the student write more like its teacher? Supervised KD against
GKD (λ = 0.5) and SeqKD on the demo world, over seeds, scored on suites/generation.yaml.

    python bench/onpolicy_quality.py                    # 3 seeds × 3 arms, 300 steps; docs/bench/onpolicy-quality.json
    python bench/onpolicy_quality.py --steps 60 --seeds 0 --arms supervised on-policy
    python bench/onpolicy_quality.py --warm-steps 1000 --out docs/bench/onpolicy-quality-warm.json

Every arm starts from the demo student, or with ``--warm-steps N`` from the demo student first
distilled N supervised steps (GKD's setting: on-policy KD fine-tunes a student that already writes
the task's kind of text).

Every arm trains the same steps, batch, block, learning rate and DDK
mixture with the same seeds; the arms differ only in what the student learns on (distiller/onpolicy.py,
distiller/seqkd.py):

- supervised: DDK's CE + γ·KL on the corpus rows (kdh's default);
- on-policy: half the steps (λ = 0.5) on the student's own 32-token continuations of 64-token prompts,
  JSD_β (β = 0.5) from the teacher; the other half as supervised;
- seq-kd: the supervised steps on the teacher's greedy 32-token continuations of 64-token prompts
  (generated once, 256 per domain);
- on-policy + seq-kd: half the steps on-policy, the other half on the teacher's continuations (GKD with
  TRL's ``seq_kd``);
- on-policy with reverse KL (β = 1, mode-seeking: what GKD found best for generation), at λ 0.5 and 1.

Each final student is scored with the teacher through kdh's scoring (lm-eval, the result cache for the
teacher): the generation slices' rougeL_vs_teacher (exact_match_vs_teacher for arithmetic, what the
suite counts) and the bits-per-byte slices.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARMS = {"supervised": {}, "on-policy": {"lmbda": 0.5, "beta": 0.5},
        "seq-kd": {"seq_kd": "auto"}, "on-policy + seq-kd": {"lmbda": 0.5, "beta": 0.5, "seq_kd": "auto"},
        "on-policy, reverse KL": {"lmbda": 0.5, "beta": 1.0}, "on-policy, λ 1, reverse KL": {"lmbda": 1.0, "beta": 1.0}}
PROMPT, NEW = 64, 32


def scores(suite, teacher: Path, student: Path, limit: int | None) -> dict[str, float]:
    from harness.models import ModelRef
    from harness.scoring import ScoringOptions, score_suite

    card = score_suite(suite, [ModelRef("teacher", str(teacher)), ModelRef("student", str(student))],
                       ScoringOptions(limit=limit))
    rows = card.rows[(card.rows["model"] == "student") & card.rows["primary"]]
    return {f"{r.domain}/{r.slice}": float(r.value) for r in rows.itertuples()}


def main() -> None:
    import sys

    sys.path.insert(0, str(ROOT))
    from bench.distill_step import world_store
    from distiller.config import DistillConfig
    from distiller.seqkd import GenerationSettings, compute_generations
    from distiller.trainer import distill
    from harness.demo import ensure_world
    from harness.home import configure_environment, kdh_home
    from harness.inputs import open_suite

    configure_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--add", action="store_true", help="add these arms to the results already in --out")
    parser.add_argument("--warm-steps", type=int, default=0,
                        help="distil the demo student this many supervised steps first; every arm starts from it")
    parser.add_argument("--new-tokens", type=int, default=NEW, help="tokens the student samples on an on-policy step")
    parser.add_argument("--limit", type=int, default=None, help="items per slice (default: the suite's)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "onpolicy-quality.json"))
    args = parser.parse_args()

    world = ensure_world(kdh_home(), "default", progress=True)
    suite = open_suite(str(ROOT / "suites" / "generation.yaml"))
    store = world_store(world, str(world.student_dir))
    work = kdh_home() / "bench" / "onpolicy-quality"
    generations = None
    if any(ARMS[a].get("seq_kd") for a in args.arms):
        generations = compute_generations(world.teacher_dir, store, kdh_home() / "generations",
                                          GenerationSettings(prompts=256, prompt_tokens=PROMPT, new_tokens=NEW))
    student = world.student_dir
    if args.warm_steps:  # one warm student for every arm and seed, its own seed apart from theirs
        warm = DistillConfig(teacher=str(world.teacher_dir), student=str(student), output_dir=str(work / f"warm-{args.warm_steps}"),
                             steps=args.warm_steps, seed=1000, save_every=args.warm_steps, progress=True)
        student = distill(warm, store).student_dir
    result = {"args": vars(args), "date": time.strftime("%Y-%m-%d"),
              "initial": scores(suite, world.teacher_dir, student, args.limit), "arms": {a: [] for a in args.arms}}
    print("initial student: " + json.dumps({k: round(v, 3) for k, v in result["initial"].items()}), flush=True)
    for seed in args.seeds:
        for arm in args.arms:
            extra = dict(ARMS[arm])
            if extra.get("seq_kd") == "auto":
                extra["seq_kd"] = str(generations.root)
            config = DistillConfig(teacher=str(world.teacher_dir), student=str(student),
                                   output_dir=str(work / f"{arm}-seed{seed}-warm{args.warm_steps}"), steps=args.steps,
                                   seed=seed, prompt_tokens=PROMPT, new_tokens=args.new_tokens, save_every=args.steps, progress=False, **extra)
            started = time.perf_counter()
            run = distill(config, store)
            entry = {"seed": seed, "seconds": time.perf_counter() - started, "tokens_per_s": run.tokens_per_s,
                     "slices": scores(suite, world.teacher_dir, run.student_dir, args.limit)}
            result["arms"][arm].append(entry)
            print(f"seed {seed} {arm}: " + json.dumps({k: round(v, 3) for k, v in entry["slices"].items()}), flush=True)
    if args.add and Path(args.out).is_file():  # the arms measured before, kept beside the new ones
        before = json.loads(Path(args.out).read_text())
        result["arms"] = {**before["arms"], **result["arms"]}
    summary = {}
    for arm, runs in result["arms"].items():
        for key in runs[0]["slices"]:
            values = [r["slices"][key] for r in runs]
            summary.setdefault(key, {})[arm] = {"mean": statistics.fmean(values),
                                                "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
    result["summary"] = summary
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    for key, arms in summary.items():
        print(f"{key:32s} " + "  ".join(f"{a} {v['mean']:.3f}±{v['sd']:.3f}" for a, v in arms.items()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
