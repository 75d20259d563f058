"""The verbs that close the loop: `kdh gate`, `kdh promote`, `kdh loop` (the rest: harness/cli.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from harness import home
from harness.cli import default_suite, demo_world, open_suite, model_ref, scoring_arguments, scoring_options
from harness.errors import BadInput, KdhError
from harness.report import verdict_report


def cmd_gate(args) -> int:
    import pandas as pd

    from harness import loop, promotion, tracking
    from harness.gate import VERDICT_COLUMNS, Verdict, mismatch
    from harness.models import ModelRef
    from harness.scorecard import Scorecard

    uri = tracking.connect(args.tracking_uri)
    suite = open_suite(args.suite or str(default_suite()), allow_code=args.allow_code)
    out = Path(args.out) if args.out else home.kdh_home() / "gates" / f"{suite.name}-{loop.stamp()}"
    scorecard = champion = None
    if args.scorecard:  # gate results already scored (names: teacher, candidate, champion)
        scorecard = Scorecard.load(Path(args.scorecard))
        problems = mismatch(suite, scorecard)
        if problems:
            raise BadInput(f"--scorecard {args.scorecard} does not match {suite.path}: {'; '.join(problems)}. "
                           "Score again (kdh gate without --scorecard; unchanged models come from the cache)")
        sources = {m: p.get("source", m) for m, p in scorecard.models.items()}
        teacher = ModelRef(scorecard.reference, sources.get(scorecard.reference, ""))
        candidate = ModelRef("candidate", sources.get("candidate", "(missing)"))
        champion = ModelRef("champion", sources["champion"]) if "champion" in sources else None
    else:
        world = None if (args.teacher and args.candidate) else demo_world()
        teacher = model_ref("teacher", args.teacher or world.teacher_dir, args)
        candidate = model_ref("candidate", args.candidate or loop.newest_student(suite) or world.student_dir, args)
        registered = promotion.registered_name(suite.name)
        if args.champion and args.champion != "none":
            champion = model_ref("champion", args.champion, args)
        elif args.champion is None and promotion.champion_version(registered) is not None:
            champion = model_ref("champion", f"models:/{registered}@champion", args)
    print(f"kdh gate · suite '{suite.name}' · candidate {candidate.source} · champion "
          f"{champion.source if champion else 'none'} · tracking {tracking.redact(uri)}", file=sys.stderr)
    try:
        outcome = loop.gate(suite, teacher, candidate, champion, scoring_options(args), out, args.junit, args.summary, scorecard)
    except KdhError as err:  # CI still gets a report that says the gate did not pass, and why
        failed = Verdict(pd.DataFrame(columns=VERDICT_COLUMNS), candidate.name, None, teacher.name)
        loop.write_verdict_files(failed.with_failures("gate", "run", [str(err)]), suite, None, args.junit, args.summary)
        raise
    print(verdict_report(outcome.verdict))
    print(f"\nVerdict: {out / 'verdict.csv'} · MLflow run {outcome.run_id}"
          + (f" · JUnit {args.junit}" if args.junit else "") + (f" · summary {args.summary}" if args.summary else ""))
    return outcome.exit_code


def cmd_promote(args) -> int:
    from harness import loop, promotion, tracking
    from harness.models import ModelRef, fingerprint
    from harness.report import table

    tracking.connect(args.tracking_uri)
    suite = open_suite(args.suite or str(default_suite()))
    name = args.name or promotion.registered_name(suite.name)
    if args.rollback:
        moved = promotion.rollback(name)
        print(f"models:/{name}@champion: version {moved['left']} → {moved['version']} (rolled back)")
    elif args.candidate or not args.list:
        source = args.candidate or loop.newest_student(suite)
        if source is None:
            raise BadInput("no candidate: give --candidate PATH (or run `kdh distill` / `kdh loop` first)")
        candidate = ModelRef("candidate", promotion.resolve(str(source)))
        gate_run = loop.passing_gate_run(suite.name, fingerprint(candidate))
        if gate_run is None and not args.force:
            print(f"kdh: {source} has no passing `kdh gate` run in kdh/{suite.name}: gate it first "
                  "(or --force to promote without one)", file=sys.stderr)
            return 1
        with tracking.tracked_run(suite.name, "promote", f"promote {Path(candidate.source).name}"):
            promoted = promotion.promote(Path(candidate.source), name, tags={"kdh.gate_run": gate_run or "forced"})
        print(f"models:/{name}@champion → version {promoted['version']} (was {promoted['previous'] or 'none'})")
    print(table(promotion.history(name)))
    return 0


def cmd_loop(args) -> int:
    from distiller.cross import check_pair
    from harness import loop, tracking

    uri = tracking.connect(args.tracking_uri)
    suite = open_suite(args.suite or str(default_suite()))
    loop.distill_domains(suite)  # bad input fails now, not after the first scoring
    world = None if (args.teacher and args.student) else demo_world()
    teacher = model_ref("teacher", args.teacher or world.teacher_dir, args)
    base = model_ref("student", args.student or world.student_dir, args).source
    try:  # the loop distils with --kd kd: two tokenizers are bad input now, not after the first scoring
        check_pair(teacher.source, base, "kd", args.kd_weight)
    except (OSError, ValueError) as err:
        raise BadInput(str(err)) from None
    settings = loop.LoopSettings(rounds=args.rounds, steps=args.steps, batch_size=args.train_batch_size,
                                 kd_weight=args.kd_weight, interval=args.interval, seed=args.seed,
                                 promote=not args.no_promote)
    out = Path(args.out) if args.out else home.kdh_home() / "loop" / f"{suite.name}-{loop.stamp()}"
    print(f"kdh loop · suite '{suite.name}' · teacher {teacher.source} · base student {base} · "
          f"{args.rounds} round(s) · tracking {tracking.redact(uri)}", file=sys.stderr)
    started = time.perf_counter()
    code = loop.run_loop(suite, teacher, base, settings, scoring_options(args), out, args.junit, args.summary)
    print(f"\nkdh loop: {'done' if code == 0 else 'the candidate was rejected'} in {time.perf_counter() - started:.0f} s · {out}")
    return code


def add_verbs(verbs) -> None:
    ga = verbs.add_parser("gate", help="pass or fail a candidate against the teacher and the champion (exit 1 on fail)")
    ga.add_argument("--suite", help="suite file (default: suites/default.yaml)")
    ga.add_argument("--candidate", help="the student to judge (default: the newest distilled student, else the demo student)")
    ga.add_argument("--teacher", help="default: the demo teacher")
    ga.add_argument("--champion", help="the model a regression is measured against (default: models:/kdh-SUITE@champion "
                                       "when one is registered; 'none' to skip the regression checks)")
    ga.add_argument("--scorecard", help="gate an existing scorecard.json (models teacher, candidate, champion) instead of scoring")
    ga.add_argument("--junit", metavar="FILE", help="write JUnit XML: one test case per domain, slice and check")
    ga.add_argument("--summary", metavar="FILE", help="append a Markdown summary (e.g. $GITHUB_STEP_SUMMARY)")
    ga.add_argument("--out", help="folder for the scorecard and verdict.csv (default: $KDH_HOME/gates/…)")
    scoring_arguments(ga)
    ga.set_defaults(func=cmd_gate)

    pr = verbs.add_parser("promote", help="move the registry alias 'champion' to a gated candidate, or back")
    pr.add_argument("--suite", help="suite file (default: suites/default.yaml); names the registered model")
    pr.add_argument("--candidate", help="the student to promote (default: the newest distilled student)")
    pr.add_argument("--name", help="registered model name (default: kdh-SUITE)")
    pr.add_argument("--rollback", action="store_true", help="move 'champion' back to the previous champion")
    pr.add_argument("--list", action="store_true", help="show the versions and which is champion")
    pr.add_argument("--force", action="store_true", help="promote without a passing gate run")
    pr.add_argument("--tracking-uri")
    pr.set_defaults(func=cmd_promote)

    lo = verbs.add_parser("loop", help="evaluate → distil the weak domains with DDK → gate → promote")
    lo.add_argument("--suite", help="suite file (default: suites/default.yaml)")
    lo.add_argument("--teacher", help="default: the demo teacher")
    lo.add_argument("--student", help="the base student, used while no champion is registered (default: the demo student)")
    lo.add_argument("--rounds", type=int, default=1, help="repeat while weak domains remain (default 1)")
    lo.add_argument("--steps", type=int, default=300, help="distillation steps per round")
    lo.add_argument("--train-batch-size", type=int, default=8)
    lo.add_argument("--kd-weight", type=float, default=0.2)
    lo.add_argument("--interval", type=int, default=50, help="K: steps between DDK mixture updates")
    lo.add_argument("--seed", type=int, default=0)
    lo.add_argument("--no-promote", action="store_true", help="gate, but leave the champion where it is")
    lo.add_argument("--junit", metavar="FILE")
    lo.add_argument("--summary", metavar="FILE")
    lo.add_argument("--out", help="default: $KDH_HOME/loop/…")
    scoring_arguments(lo)
    lo.set_defaults(func=cmd_loop)
