"""`kdh teacher-signal`: the teacher over a token store once, its sparse signal stored (docs/teacher-signal.md).

It finds or computes the signal (distiller/teacher_signal.py) under an MLflow run of kind
``teacher-signal`` and prints where it is; `kdh distill --teacher-signal PATH` and `kdh loop
--teacher-signal` train from it without loading the teacher. Several processes share the work:
``accelerate launch -m harness.cli teacher-signal …`` (each rank computes every world-th part; the
main one tracks and publishes).
"""

from __future__ import annotations

from pathlib import Path

from harness import console
from harness.errors import distill_errors
from harness.inputs import add_verb, model_or_demo, open_suite


def cmd_teacher_signal(args) -> int:
    import torch
    from accelerate import PartialState

    from distiller.teacher_signal import SignalSettings, compute_signal
    from harness import corpora, home, steps, tracking

    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
    suite = open_suite(args.suite)
    teacher = model_or_demo(args.teacher, "teacher", progress=state.is_main_process)
    student = model_or_demo(args.student, "student", progress=state.is_main_process)
    settings = SignalSettings(k=args.k, mode=args.mode, temperature=args.temperature, seed=args.seed,
                              block_size=args.block_size, batch_size=args.batch_size)
    out = Path(args.out) if args.out else None
    with distill_errors():
        store = Path(args.store) if args.store else None
        if store is None and state.is_main_process:
            store = corpora.store_for(suite, student).root
        state.wait_for_everyone()
        if not state.is_main_process:  # a helper rank: its share of the parts, no tracking
            compute_signal(teacher, store or corpora.store_for(suite, student).root, out,
                           root=home.kdh_home() / "signals", settings=settings, student_dir=student,
                           domains=[d.name for d in suite.domains], device=args.device)
            return 0
    uri = tracking.connect(args.tracking_uri)
    console.note(f"kdh teacher-signal · teacher {teacher} · store {store} · {args.mode} k={args.k} · "
                 f"tracking {tracking.redact(uri)}")
    made = steps.teacher_signal(suite, teacher, student, store, settings, out, device=args.device)
    what = f"computed, {made.positions:,} positions in {made.seconds:.1f} s" if made.computed else "up to date"
    console.say(f"Teacher signal {made.fingerprint[:12]} ({what}): {made.root}")
    console.say(f"Train from it: kdh distill --teacher-signal {made.root}")
    return 0


def add_verbs(verbs) -> None:
    from distiller.config import DistillConfig, SignalSettings

    ts = add_verb(verbs, "teacher-signal", cmd_teacher_signal,
                  "run the teacher over the token store once and store its sparse signal (top-k or sampled)",
                  out="the signal's folder (default: $KDH_HOME/signals/<fingerprint>)")
    ts.add_argument("--teacher", help="default: the demo teacher")
    ts.add_argument("--student", help="caps the block size by its context and tokenizes the suite's corpora when no "
                                      "--store is given (default: the demo student)")
    ts.add_argument("--store", help="a token store from `kdh prepare` (default: the suite's corpora, prepared on first use)")
    ts.add_argument("-k", "--k", type=int, default=64, help="top-k entries a position, or draws with --mode sampled")
    ts.add_argument("--mode", default="top-k", choices=("top-k", "sampled"),
                    help="top-k: the k likeliest ids and the tail mass; sampled: k ids drawn from the teacher "
                         "(Sparse Logit Sampling: an unbiased target)")
    ts.add_argument("--temperature", type=float, default=DistillConfig.temperature)
    ts.add_argument("--seed", type=int, default=0, help="the draws of --mode sampled")
    ts.add_argument("--block-size", type=int, default=DistillConfig.block_size, help="as kdh distill's")
    ts.add_argument("--batch-size", type=int, default=SignalSettings.batch_size, help="blocks a teacher forward")
    ts.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ts.add_argument("--tracking-uri")
