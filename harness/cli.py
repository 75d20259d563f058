"""The `kdh` command. Each verb runs on the embedded default when given no arguments.

Exit codes: 0 pass, 1 the gate failed, 2 bad input or config, 3 a failure while running.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from harness import console, home
from harness.errors import EXIT_RUNTIME, BadInput, KdhError
from harness.inputs import (DEMO_SIZES, add_verb, demo_world, model_or_demo, model_ref, open_suite, output_folder,
                            scoring_arguments, scoring_options)

# --------------------------------------------------------------------------------------------
# Verbs


def cmd_demo(args) -> int:
    from harness.report import table

    if args.size:
        os.environ["KDH_DEMO_SIZE"] = args.size
    started = time.perf_counter()
    world = demo_world()
    manifest = world.manifest
    console.say(f"Demo world ({world.size}) at {world.root}  [{time.perf_counter() - started:.1f} s]")
    console.say(f"  recipe {manifest.get('recipe_hash', '?')[:12]} · corpus {manifest.get('corpus_fingerprint', '?')[:12]}")
    console.say(f"  teacher: {world.teacher_dir}\n  student: {world.student_dir}\n  tokenizer: {world.tokenizer_dir}")
    console.say(f"  cross-vocabulary student: {world.cross_student_dir} (its own tokenizer: {world.cross_tokenizer_dir})")
    console.say()
    console.say(table(demo_summary(manifest)))
    return 0


def demo_summary(manifest: dict):
    """Per domain: documents per split and the build's held-out bits per byte of both models."""
    import pandas as pd

    bpb = manifest.get("evaluation", {}).get("test_bpb", {})
    rows = []
    for domain, splits in manifest.get("domains", {}).items():
        rows.append({"domain": domain, **{f"{s} docs": splits[s]["docs"] for s in ("train", "validation", "test")},
                     "mc items": splits.get("test_mc", {}).get("items", 0),
                     "teacher bpb": bpb.get("teacher", {}).get(domain, float("nan")),
                     "student bpb": bpb.get("student", {}).get(domain, float("nan")),
                     "cross student bpb": bpb.get("cross_student", {}).get(domain, float("nan"))})
    return pd.DataFrame(rows)


def cmd_suites_list(args) -> int:
    import pandas as pd

    from harness.registry import discover_suites
    from harness.report import table

    folder = Path(args.dir) if args.dir else home.repo_suites_dir()
    rows = []
    for path in discover_suites(folder):
        try:
            suite = open_suite(str(path), allow_code=args.allow_code)
            rows.append({"suite": suite.name, "domains": len(suite.domains),
                         "slices": sum(len(d.slices) for d in suite.domains), "file": path.name, "status": "ok"})
        except KdhError as err:
            rows.append({"suite": path.stem, "domains": 0, "slices": 0, "file": path.name,
                         "status": f"invalid: {str(err).split(': ', 1)[-1][:80]}"})
    if not rows:
        console.say(f"no suite files (*.yaml) in {folder}")
        return 0
    console.say(table(pd.DataFrame(rows)))
    return 0


def cmd_suites_validate(args) -> int:
    from harness.registry import check_builtin_tasks

    suite = open_suite(args.file, allow_code=args.allow_code)
    check_builtin_tasks(suite)
    console.say(f"{suite.path}: ok · suite '{suite.name}' · {len(suite.domains)} domains · "
                f"{sum(len(d.slices) for d in suite.domains)} slices")
    for domain in suite.domains:
        slices = ", ".join(f"{s.name} ({s.metric}, {'higher' if s.higher_is_better else 'lower'} is better)"
                           for s in domain.slices)
        console.say(f"  {domain.name}: {slices}")
    return 0


def cmd_eval(args) -> int:
    from harness import steps, tracking
    from harness.models import ModelRef
    from harness.registry import check_builtin_tasks
    from harness.report import scorecard_report

    uri = tracking.connect(args.tracking_uri)  # a dead server fails now, not after the scoring
    suite = open_suite(args.suite, allow_code=args.allow_code)
    check_builtin_tasks(suite)
    if args.model:
        refs = [ModelRef.parse(spec) for spec in args.model]
        refs = [model_ref(r.name, r.source, args) for r in refs]
    else:
        refs = [model_ref(role, model_or_demo(None, role), args) for role in ("teacher", "student")]
    if args.reference:
        names = [r.name for r in refs]
        if args.reference not in names:
            raise BadInput(f"--reference '{args.reference}' is not one of the models ({', '.join(names)})")
        refs.sort(key=lambda r: r.name != args.reference)  # the reference is scored first and kept first
    out = output_folder(args.out, "evals", suite.name)
    console.note(f"kdh eval · suite '{suite.name}' ({suite.path}) · models {', '.join(r.name for r in refs)} · "
                 f"tracking {tracking.redact(uri)}")
    scorecard, run_id = steps.evaluate(suite, refs, scoring_options(args), out, f"eval {suite.name}", args.profile)
    console.note(f"scoring: {steps.cached_note(scorecard)}")
    console.say()
    console.say(scorecard_report(scorecard))
    console.say()
    if not scorecard.agreement.empty:
        from harness.analytics_report import agreement_report

        console.say(agreement_report(scorecard))
        console.say()
    if args.profile:
        console.say(profile_report(scorecard, out))
    from harness.recommend import recommendations

    for model in (m for m in scorecard.model_names if m != scorecard.reference):
        if advice := recommendations(scorecard, suite, model):
            console.say(f"Recommendations for {model} (rules and their numbers: docs/analytics.md)")
            console.say("\n".join(f"  - {line}" for line in advice) + "\n")
    beside = "samples.csv" + (", agreement.csv" if not scorecard.agreement.empty else "") + (
        ", items.csv" if not scorecard.items.empty else "")
    console.say(f"Saved {out / 'scorecard.csv'} and scorecard.json, {beside} beside it")
    console.say(f"MLflow: experiment kdh/{suite.name}, run {run_id} ({tracking.redact(uri)})")
    return 0


def profile_report(scorecard, out: Path) -> str:
    """The generation profile `kdh eval --profile` measured, and each student's ratios to the reference."""
    import pandas as pd

    from harness.analytics_report import profile_ratios
    from harness.report import table

    found = pd.read_csv(out / "profile.csv")
    shown = found.drop(columns=["hardware"]).assign(size_mb=found["bytes_on_disk"] / 2**20).drop(columns=["bytes_on_disk"])
    return "\n".join([f"Generation profile (greedy; measured on {found['hardware'].iloc[0]})", "", table(shown), "",
                      f"Student ÷ {scorecard.reference} beside the student's mean retention", "",
                      table(profile_ratios(found, scorecard.reference, scorecard.domains)), ""])


# --------------------------------------------------------------------------------------------
# Parser


def build_parser() -> argparse.ArgumentParser:
    from harness import cli_analytics, cli_classify, cli_distill, cli_loop, cli_prepare, cli_signal, dashboard

    parser = argparse.ArgumentParser(prog="kdh", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs and tracebacks")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    demo = verbs.add_parser("demo", help="build (or show) the embedded demo world")
    demo.add_argument("--size", choices=DEMO_SIZES, help="default: $KDH_DEMO_SIZE or 'default'")
    demo.set_defaults(func=cmd_demo)

    suites = verbs.add_parser("suites", help="list or validate suites")
    suite_verbs = suites.add_subparsers(dest="suites_verb", metavar="ACTION")
    listing = suite_verbs.add_parser("list", help="the suites in a folder (default: the shipped suites/)")
    listing.add_argument("--dir")
    listing.add_argument("--allow-code", action="store_true", help="allow task files that run code")
    listing.set_defaults(func=cmd_suites_list)
    validate = suite_verbs.add_parser("validate", help="check a suite file; exit 2 with the field if it is wrong")
    validate.add_argument("file")
    validate.add_argument("--allow-code", action="store_true", help="allow task files that run code")
    validate.set_defaults(func=cmd_suites_validate)
    suites.set_defaults(func=cmd_suites_list, dir=None, allow_code=False)

    ev = add_verb(verbs, "eval", cmd_eval, "score models on a suite; log the scorecard to MLflow",
                  out="folder for scorecard.csv/json (default: $KDH_HOME/evals/…)")
    ev.add_argument("--model", action="append", metavar="NAME=PATH",
                    help="a model to score (repeat; a folder or models:/NAME@ALIAS; default: the demo teacher and student)")
    ev.add_argument("--reference", help="the model retention is measured against (default: the first)")
    ev.add_argument("--profile", action="store_true", help="also profile each model's generation: latency per "
                                                           "token at batch 1 and 8, time to first token, tokens/s, "
                                                           "peak memory (docs/analytics.md)")
    scoring_arguments(ev)

    cli_distill.add_verbs(verbs)  # distill
    cli_loop.add_verbs(verbs)  # gate, promote, loop
    cli_prepare.add_verbs(verbs)  # prepare
    cli_classify.add_verbs(verbs)  # classify
    cli_signal.add_verbs(verbs)  # teacher-signal
    cli_analytics.add_verbs(verbs)  # align, sweep
    dashboard.add_verb(verbs)
    return parser


def _configure_logging(verbose: bool) -> None:
    """Warnings and up from every library (INFO with -v); where they land is the console's business:
    the log file, or the terminal with -v."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("lm_eval", "lm-eval", "transformers", "datasets", "mlflow", "great_expectations", "alembic", "httpx"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def _stop_on_sigterm():
    """CI cancels a job with SIGTERM: turn it into the same clean stop as Ctrl-C, so the MLflow run
    ends KILLED (never FINISHED) and nothing half-written is published. Returns the handler to
    restore (None off the main thread, where Python allows no handlers)."""
    import signal
    import threading

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    home.configure_environment()
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    previous = _stop_on_sigterm()
    # The libraries' output goes to a log file (kept with the MLflow run), unless -v; the dashboard's
    # server keeps the console: what it prints is for the person running it.
    log = None if args.verbose or args.verb == "dashboard" else (
        home.kdh_home() / "logs" / f"{args.verb}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    try:
        with console.to_log(log) if log is not None else contextlib.nullcontext():
            return _run(args, log)
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


def _run(args, log: Path | None) -> int:
    """The verb, with kdh's errors turned into a message and an exit code."""
    from harness.tracking import redact

    try:
        return args.func(args) or 0
    except KdhError as err:
        console.note(f"kdh: error: {redact(str(err))}")
        return err.exit_code
    except KeyboardInterrupt:
        console.note("kdh: interrupted")
        return EXIT_RUNTIME
    except Exception as err:  # a failure while running: say what; the traceback goes to the log (or -v)
        if log is not None or args.verbose:
            traceback.print_exc()
        message = redact(f"{type(err).__name__}: {err}")
        if "database is locked" in message:  # SQLite takes one writer at a time
            message = ("the local MLflow store (SQLite) is busy: another kdh process is writing to it. Run one "
                       "kdh process at a time against it, or start a server for concurrent runs (`mlflow server "
                       "--backend-store-uri sqlite:///PATH.db`) and set MLFLOW_TRACKING_URI=http://127.0.0.1:5000")
        console.note(f"kdh: failed while running: {message}" + (f" (details: {log})" if log else ""))
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
