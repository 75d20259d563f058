"""Why DSKD and DSKD-CMA lose to plain training on the demo world: one seed, 200 steps, each arm the
comparison's setting with one part of the loss changed, and the dual-space terms logged over steps.

The variants wrap the loss functions ``distiller.step`` calls (and the trainer's projector factory)
for the length of one run; the loop itself is the unchanged ``distiller.trainer.distill``.

    python bench/dskd_ablations.py --out docs/dskd-ablations.json
"""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from pathlib import Path

from harness.home import configure_environment, kdh_home

TERMS = ("student_ce", "t2s_ce", "student_kd", "teacher_kd", "agreement")
# id: (which demo student, --kd, weight, the terms dropped from the loss, projector init). The distiller
# now starts the projectors from the heads (Projectors.from_heads): the "heads" variants are its default,
# and "random" (nn.Linear's default, the init before) reproduces the runs recorded in docs/dskd-ablations.json.
VARIANTS = {
    "cma": ("cross_student", "dskd-cma", 0.5, (), "random"),
    "cma-no-teacher-space": ("cross_student", "dskd-cma", 0.5, ("teacher_kd",), "random"),
    "cma-projectors-only": ("cross_student", "dskd-cma", 0.5, ("student_kd", "teacher_kd"), "random"),
    "cma-w0.2": ("cross_student", "dskd-cma", 0.2, (), "random"),
    "cma-heads-init": ("cross_student", "dskd-cma", 0.5, (), "heads"),  # the default now
    "dskd": ("student", "dskd", 0.5, (), "random"),
    "dskd-no-student-space": ("student", "dskd", 0.5, ("student_kd",), "random"),
    "dskd-pinv-init": ("student", "dskd", 0.5, (), "heads"),  # the default now
    "dskd-pinv-init-w0.2": ("student", "dskd", 0.2, (), "heads"),
    "kd-gamma2": ("student", "kd", 2.0, (), "heads"),
}


@contextmanager
def variant(dropped: tuple[str, ...], init: str, log: list):
    """Log each step's dual-space terms; zero the dropped ones (the student gets no gradient from
    them); with ``init="random"``, start the projectors from nn.Linear's default instead of the heads."""
    from distiller import step, trainer
    from distiller.dskd import Projectors

    saved = step.cma_loss, step.dual_space_loss, trainer.make_projectors

    def edit(terms):
        log.append({t: getattr(terms, t).item() for t in TERMS})
        for term in dropped:
            setattr(terms, term, getattr(terms, term) * 0.0)
        return terms

    def cma(*args, **kwargs):
        terms, weights = saved[0](*args, **kwargs)
        return edit(terms), weights

    def make(kd, kd_weight, student, teacher, token_pairs=None):
        if init == "heads" or kd not in ("dskd", "dskd-cma") or kd_weight == 0:
            return saved[2](kd, kd_weight, student, teacher, token_pairs)
        return Projectors(student.get_output_embeddings().weight.shape[1],
                                teacher.get_output_embeddings().weight.shape[1], cross_attention=kd == "dskd-cma")

    step.cma_loss, step.dual_space_loss, trainer.make_projectors = cma, lambda *a, **k: edit(saved[1](*a, **k)), make
    try:
        yield
    finally:
        step.cma_loss, step.dual_space_loss, trainer.make_projectors = saved


def main() -> None:
    configure_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", help=f"a comma-separated subset of: {', '.join(VARIANTS)}")
    parser.add_argument("--out", default="docs/dskd-ablations.json")
    args = parser.parse_args()

    from dskd_comparison import DOMAINS, held_out_bpb  # bench/ is the script's folder, first on sys.path
    from distiller.trainer import DistillConfig, distill
    from harness.demo import ensure_world

    world = ensure_world(kdh_home(), "default")
    domains = {d: (world.domain_file(d, "train.jsonl"), world.domain_file(d, "validation.jsonl")) for d in DOMAINS}
    starts = {"student": world.student_dir, "cross_student": world.cross_student_dir}
    results = {}
    for name in args.variants.split(",") if args.variants else VARIANTS:
        start, kd, kd_weight, dropped, init = VARIANTS[name]
        config = DistillConfig(teacher=str(world.teacher_dir), student=str(starts[start]),
                               output_dir=str(kdh_home() / "bench" / "dskd-ablations" / name), steps=args.steps,
                               batch_size=8, block_size=256, lr=1e-3, kd=kd, kd_weight=kd_weight, mixture="ddk",
                               interval=50, seed=args.seed, save_every=args.steps, progress=False)
        log: list[dict] = []
        with variant(dropped, init, log):
            result = distill(config, domains)
        bpb = held_out_bpb(result.student_dir, world, 120, 256)
        results[name] = {"bits_per_byte": bpb, "mean": sum(bpb.values()) / len(bpb),
                         "terms": {step: log[step] for step in (0, 10, 50, 100, len(log) - 1) if log[step:]}}
        print(name, json.dumps({d: round(v, 4) for d, v in bpb.items()}), f"mean {results[name]['mean']:.3f}",
              flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "variants": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
