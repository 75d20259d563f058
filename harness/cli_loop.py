"""The verbs that close the loop: `kdh gate`, `kdh promote`, `kdh loop` (the rest: harness/cli.py)."""

from __future__ import annotations

import time
from pathlib import Path

from harness import console
from harness.errors import BadInput, KdhError, distill_errors
from harness.inputs import (add_verb, generation_settings, model_or_demo, model_ref, on_policy_arguments,
                            on_policy_options, open_suite, output_folder, scoring_arguments, scoring_options)
from harness.report import trends_report, verdict_report


def cmd_gate(args) -> int:
    import pandas as pd

    from harness import corpora, promotion, steps, tracking
    from harness.gate import VERDICT_COLUMNS, Verdict, mismatch
    from harness.models import ModelRef
    from harness.scorecard import Scorecard

    uri = tracking.connect(args.tracking_uri)
    suite = open_suite(args.suite, allow_code=args.allow_code)
    out = output_folder(args.out, "gates", suite.name)
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
        teacher = model_ref("teacher", model_or_demo(args.teacher, "teacher"), args)
        candidate = model_ref("candidate", model_or_demo(args.candidate or steps.newest_student(suite), "student"), args)
        registered = promotion.registered_name(suite.name)
        if args.champion and args.champion != "none":
            champion = model_ref("champion", args.champion, args)
        elif args.champion is None and promotion.champion_version(registered) is not None:
            champion = model_ref("champion", f"models:/{registered}@champion", args)
    console.note(f"kdh gate · suite '{suite.name}' · candidate {candidate.source} · champion "
                 f"{champion.source if champion else 'none'} · tracking {tracking.redact(uri)}")
    # The training corpus's overlap with the test slices, in the candidate's (the store's) tokens.
    contamination = corpora.contamination(suite, Path(args.store), candidate.source) if args.store else None
    try:
        outcome = steps.gate(suite, teacher, candidate, champion, scoring_options(args), out, args.junit, args.summary,
                             scorecard, contamination)
    except KdhError as err:  # CI still gets a report that says the gate did not pass, and why
        failed = Verdict(pd.DataFrame(columns=VERDICT_COLUMNS), candidate.name, None, teacher.name)
        steps.write_verdict_files(failed.with_failures("gate", "run", [str(err)]), suite, None, args.junit, args.summary)
        raise
    console.say(verdict_report(outcome.verdict))
    if ahead := trends_report(outcome.trends, outcome.recommendations):
        console.say("\n" + ahead)
    console.say(f"\nVerdict: {out / 'verdict.csv'} · MLflow run {outcome.run_id}"
                + (f" · JUnit {args.junit}" if args.junit else "") + (f" · summary {args.summary}" if args.summary else ""))
    return outcome.exit_code


def cmd_promote(args) -> int:
    from harness import model_uris, promotion, steps, tracking
    from harness.models import ModelRef, fingerprint
    from harness.report import table

    tracking.connect(args.tracking_uri)
    suite = open_suite(args.suite)
    name = args.name or promotion.registered_name(suite.name)
    if args.rollback:
        moved = promotion.rollback(name)
        console.say(f"models:/{name}@champion: version {moved['left']} → {moved['version']} (rolled back)")
    elif args.candidate or not args.list:
        source = args.candidate or steps.newest_student(suite)
        if source is None:
            raise BadInput("no candidate: give --candidate PATH (or run `kdh distill` / `kdh loop` first)")
        candidate = ModelRef("candidate", model_uris.resolve(str(source)))
        gate_run = steps.passing_gate_run(suite.name, fingerprint(candidate))
        if gate_run is None and not args.force:
            console.note(f"kdh: {source} has no passing `kdh gate` run in kdh/{suite.name}: gate it first "
                         "(or --force to promote without one)")
            return 1
        with tracking.tracked_run(suite.name, "promote", f"promote {Path(candidate.source).name}"):
            promoted = promotion.promote(Path(candidate.source), name, tags={"kdh.gate_run": gate_run or "forced"})
        console.say(promotion.promoted_line(promoted))
    console.say(table(promotion.history(name)))
    return 0


def cmd_loop(args) -> int:
    from distiller.config import DEFAULT_KD_WEIGHT, check_pair
    from harness import corpora, loop, tracking

    uri = tracking.connect(args.tracking_uri)
    suite = open_suite(args.suite)
    teacher = model_ref("teacher", model_or_demo(args.teacher, "teacher"), args)
    base = model_ref("student", model_or_demo(args.student, "student"), args).source
    kd_weight = DEFAULT_KD_WEIGHT[args.kd] if args.kd_weight is None else args.kd_weight
    with distill_errors():  # a pair the --kd mode cannot take (two tokenizers under kd) is bad input now
        check_pair(teacher.source, base, args.kd, kd_weight)
    # The corpus is tokenized (or found) now: bad data fails before the first scoring.
    store = Path(args.store) if args.store else corpora.store_for(suite, base).root
    settings = loop.LoopSettings(rounds=args.rounds, steps=args.steps, batch_size=args.train_batch_size,
                                 block_size=args.block_size,
                                 kd=args.kd, kd_weight=kd_weight, interval=args.interval, seed=args.seed,
                                 promote=not args.no_promote, store=store, teacher_signal=args.teacher_signal,
                                 signal_k=args.signal_k, signal_mode=args.signal_mode, on_policy=on_policy_options(args),
                                 generations=generation_settings(args))
    out = output_folder(args.out, "loop", suite.name)
    console.note(f"kdh loop · suite '{suite.name}' · teacher {teacher.source} · base student {base} · "
                 f"{args.rounds} round(s) · tracking {tracking.redact(uri)}")
    started = time.perf_counter()
    code = loop.run_loop(suite, teacher, base, settings, scoring_options(args), out, args.junit, args.summary)
    console.say(f"\nkdh loop: {'done' if code == 0 else 'the candidate was rejected'} in {time.perf_counter() - started:.0f} s · {out}")
    return code


def add_verbs(verbs) -> None:
    from distiller.config import DEFAULT_KD_WEIGHT, KD_MODES, DistillConfig

    ga = add_verb(verbs, "gate", cmd_gate,
                  "pass or fail a candidate against the teacher and the champion (exit 1 on fail)",
                  out="folder for the scorecard and verdict.csv (default: $KDH_HOME/gates/…)")
    ga.add_argument("--candidate", help="the student to judge (default: the newest distilled student, else the demo student)")
    ga.add_argument("--teacher", help="default: the demo teacher")
    ga.add_argument("--champion", help="the model a regression is measured against (default: models:/kdh-SUITE@champion "
                                       "when one is registered; 'none' to skip the regression checks)")
    ga.add_argument("--scorecard", help="gate an existing scorecard.json (models teacher, candidate, champion) instead of scoring")
    ga.add_argument("--store", help="the token store the candidate was trained on: check its overlap with the test "
                                    "slices against the suite's max_contamination")
    ga.add_argument("--junit", metavar="FILE", help="write JUnit XML: one test case per domain, slice and check")
    ga.add_argument("--summary", metavar="FILE", help="append a Markdown summary (e.g. $GITHUB_STEP_SUMMARY)")
    scoring_arguments(ga)

    pr = add_verb(verbs, "promote", cmd_promote, "move the registry alias 'champion' to a gated candidate, or back",
                  suite="suite file (default: suites/default.yaml); names the registered model")
    pr.add_argument("--candidate", help="the student to promote (default: the newest distilled student)")
    pr.add_argument("--name", help="registered model name (default: kdh-SUITE)")
    pr.add_argument("--rollback", action="store_true", help="move 'champion' back to the previous champion")
    pr.add_argument("--list", action="store_true", help="show the versions and which is champion")
    pr.add_argument("--force", action="store_true", help="promote without a passing gate run")
    pr.add_argument("--tracking-uri")

    lo = add_verb(verbs, "loop", cmd_loop, "evaluate → distil the weak domains with DDK → gate → promote",
                  out="default: $KDH_HOME/loop/…")
    lo.add_argument("--teacher", help="default: the demo teacher")
    lo.add_argument("--student", help="the base student, used while no champion is registered (default: the demo student)")
    lo.add_argument("--rounds", type=int, default=1, help="repeat while weak domains remain (default 1)")
    lo.add_argument("--steps", type=int, default=DistillConfig.steps, help="distillation steps per round")
    lo.add_argument("--train-batch-size", type=int, default=DistillConfig.batch_size)
    lo.add_argument("--block-size", type=int, default=DistillConfig.block_size,
                    help="tokens per training row (capped by the models' context)")
    lo.add_argument("--kd", default=DistillConfig.kd, choices=KD_MODES,
                    help="the teacher signal, as kdh distill's --kd (dskd-cma and uld take two tokenizers)")
    lo.add_argument("--kd-weight", type=float, default=None, help="γ in CE + γ·KD (default: the --kd mode's)")
    lo.add_argument("--interval", type=int, default=DistillConfig.interval, help="K: steps between DDK mixture updates")
    lo.add_argument("--seed", type=int, default=0)
    lo.add_argument("--no-promote", action="store_true", help="gate, but leave the champion where it is")
    lo.add_argument("--store", help="a token store from `kdh prepare` (default: the suite's corpora, prepared on first use)")
    lo.add_argument("--teacher-signal", nargs="?", const="auto", metavar="PATH",
                    help="train every round from the teacher's stored sparse signal instead of running the teacher "
                         "(--kd kd): alone, found or computed once before the first round; or a PATH from "
                         "`kdh teacher-signal` (docs/teacher-signal.md)")
    lo.add_argument("--signal-k", type=int, default=64, help="with --teacher-signal alone: top-k entries (or draws)")
    lo.add_argument("--signal-mode", default="top-k", choices=("top-k", "sampled"),
                    help="with --teacher-signal alone: the top-k with its tail, or ids sampled from the teacher")
    on_policy_arguments(lo)
    lo.add_argument("--junit", metavar="FILE")
    lo.add_argument("--summary", metavar="FILE")
    scoring_arguments(lo)
