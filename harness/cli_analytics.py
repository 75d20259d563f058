"""The analytics verbs (docs/analytics.md).

`kdh align`: the vocabulary alignment report of a teacher and a student tokenizer, per domain of a
suite (harness/alignment.py). Reads tokenizers only: no model is loaded, nothing is trained, so it
answers in seconds how hard a cross-tokenizer pair is before distilling it.

`kdh sweep`: students of several sizes distilled and gated; the retention-versus-cost frontier and
the smallest student that passes (harness/sweep.py, docs/sweep.md).
"""

from __future__ import annotations

from pathlib import Path

from harness import console
from harness.errors import BadInput
from harness.inputs import add_verb, model_or_demo, open_suite, output_folder


def _tokenizer(role: str, source: str):
    from transformers import AutoTokenizer

    from harness import model_uris

    path = model_uris.resolve(source)
    if not Path(path).is_dir():
        raise BadInput(f"--{role} {source}: no such folder; give a model or tokenizer folder")
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as err:
        raise BadInput(f"--{role} {source}: no usable tokenizer there ({type(err).__name__}: {err})") from None


def cmd_align(args) -> int:
    from harness.agreement import slice_texts
    from harness.alignment import alignment_report
    from harness.report import table
    from harness.scoring import ScoringOptions

    suite = open_suite(args.suite)
    teacher = _tokenizer("teacher", model_or_demo(args.teacher, "teacher"))
    student = _tokenizer("student", model_or_demo(args.student, "cross_student"))
    by_slice = slice_texts(suite, ScoringOptions(limit=args.limit))
    texts = {d.name: [t for s in d.slices for t in by_slice[(d.name, s.name)]] for d in suite.domains}
    try:
        report = alignment_report(teacher, student, texts)
    except ValueError as err:
        raise BadInput(str(err)) from None
    out = output_folder(args.out, "align", suite.name)
    out.mkdir(parents=True, exist_ok=True)
    report.to_csv(out / "alignment.csv", index=False)
    console.say(f"Vocabulary alignment · suite '{suite.name}' · teacher {len(teacher):,} tokens, student "
                f"{len(student):,} tokens (docs/analytics.md)")
    console.say()
    console.say(table(report))
    console.say()
    console.say("shared_tokens: share of the teacher's tokens that are one student token; shared_boundaries: share "
                "of token boundaries both tokenizers make; tokens_per_byte: how finely each cuts the text")
    console.say(f"Saved {out / 'alignment.csv'}")
    return 0


def cmd_sweep(args) -> int:
    from distiller.config import DEFAULT_KD_WEIGHT, check_pair
    from harness import frontier, home, sweep, tracking
    from harness.errors import distill_errors
    from harness.inputs import model_ref, scoring_options
    from harness.loop import LoopSettings
    from harness.report import table

    uri = tracking.connect(args.tracking_uri)
    suite = open_suite(args.suite)
    students_file = Path(args.students) if args.students else home.repo_suites_dir() / "students" / "demo.yaml"
    specs = sweep.load_students(students_file)
    teacher = model_ref("teacher", model_or_demo(args.teacher, "teacher"), args)
    base = model_or_demo(args.student, "student")
    kd_weight = DEFAULT_KD_WEIGHT[args.kd] if args.kd_weight is None else args.kd_weight
    with distill_errors():
        check_pair(teacher.source, base, args.kd, kd_weight)
    settings = LoopSettings(steps=args.steps, batch_size=args.train_batch_size, block_size=args.block_size,
                            kd=args.kd, kd_weight=kd_weight, interval=args.interval, seed=args.seed,
                            store=Path(args.store) if args.store else None)
    out = output_folder(args.out, "sweep", suite.name)
    console.note(f"kdh sweep · suite '{suite.name}' · {len(specs)} students from {students_file} · teacher "
                 f"{teacher.source} · tracking {tracking.redact(uri)}")
    outcome = sweep.run_sweep(suite, teacher, base, specs, settings, scoring_options(args), out)
    shown = outcome.table[["student", "start", "parameters", "size_mb", frontier.VALUE, "worst_domain", "worst_retention",
                           "passed", "on_frontier"]].sort_values("parameters")
    console.say("\nRetention versus cost (on_frontier: no smaller student keeps more of the teacher's score)\n")
    console.say(table(shown))
    console.say("\n" + frontier.summary_line(outcome.table))
    console.say(f"\nTable: {out / 'sweep.csv'} · MLflow run {outcome.run_id} (the dashboard's Sweep view plots it)")
    return outcome.exit_code


def add_verbs(verbs) -> None:
    from distiller.config import KD_MODES, DistillConfig
    from harness.inputs import scoring_arguments

    al = add_verb(verbs, "align", cmd_align, "how well two tokenizers align, per domain: shared tokens, shared "
                  "boundaries, tokens per byte", out="folder for alignment.csv (default: $KDH_HOME/align/…)")
    al.add_argument("--teacher", help="the teacher's model or tokenizer folder (default: the demo teacher)")
    al.add_argument("--student", help="the student's (default: the demo cross-vocabulary student)")
    al.add_argument("--limit", type=int, help="documents or items per slice (overrides the suite)")

    sw = add_verb(verbs, "sweep", cmd_sweep, "distil and gate students of several sizes: the retention-versus-cost "
                  "frontier and the smallest that passes (exit 1 when none does)",
                  out="folder for each student and sweep.csv (default: $KDH_HOME/sweep/…)")
    sw.add_argument("--students", help="YAML list of students: a name with config changes to the base student "
                                       "(random init) or a model path (default: suites/students/demo.yaml)")
    sw.add_argument("--teacher", help="default: the demo teacher")
    sw.add_argument("--student", help="the base student whose config and tokenizer the entries change "
                                      "(default: the demo student)")
    sw.add_argument("--steps", type=int, default=1000,
                    help="distillation steps per student (default 1000: students from random weights need more "
                         "than a distillation from a trained student)")
    sw.add_argument("--train-batch-size", type=int, default=DistillConfig.batch_size)
    sw.add_argument("--block-size", type=int, default=DistillConfig.block_size)
    sw.add_argument("--kd", default=DistillConfig.kd, choices=KD_MODES)
    sw.add_argument("--kd-weight", type=float, default=None, help="default: the --kd mode's")
    sw.add_argument("--interval", type=int, default=DistillConfig.interval, help="K: steps between DDK mixture updates")
    sw.add_argument("--seed", type=int, default=0, help="the random initialisation's and the sampler's seed")
    sw.add_argument("--store", help="a token store from `kdh prepare` (default: the suite's corpora)")
    scoring_arguments(sw)
