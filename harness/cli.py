"""The `kdh` command. Each verb runs on the embedded default when given no arguments.

Exit codes: 0 pass, 1 the gate failed, 2 bad input or config, 3 a failure while running.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from harness import home
from harness.errors import EXIT_RUNTIME, BadInput, KdhError, RuntimeFailure

DEMO_SIZES = ("default", "tiny")


def demo_world(progress: bool = True):
    """The embedded demo world, built on first use (``KDH_DEMO_SIZE`` picks the size)."""
    from harness.demo import ensure_world

    size = os.environ.get("KDH_DEMO_SIZE", "default")
    if size not in DEMO_SIZES:
        raise BadInput(f"KDH_DEMO_SIZE='{size}': choose one of {', '.join(DEMO_SIZES)}")
    return ensure_world(home.kdh_home(), size=size, progress=progress)


def _load(path: str, allow_code: bool = False):
    from harness.registry import load_suite

    return load_suite(path, demo_data=lambda: demo_world().data_dir, allow_code=allow_code)


def default_suite() -> Path:
    return home.repo_suites_dir() / "default.yaml"


# --------------------------------------------------------------------------------------------
# Verbs


def cmd_demo(args) -> int:
    from harness.report import table

    if args.size:
        os.environ["KDH_DEMO_SIZE"] = args.size
    started = time.perf_counter()
    world = demo_world()
    manifest = world.manifest
    print(f"Demo world ({world.size}) at {world.root}  [{time.perf_counter() - started:.1f} s]")
    print(f"  recipe {manifest.get('recipe_hash', '?')[:12]} · corpus {manifest.get('corpus_fingerprint', '?')[:12]}")
    print(f"  teacher: {world.teacher_dir}\n  student: {world.student_dir}\n  tokenizer: {world.tokenizer_dir}")
    print()
    print(table(demo_summary(manifest)))
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
                     "student bpb": bpb.get("student", {}).get(domain, float("nan"))})
    return pd.DataFrame(rows)


def cmd_suites_list(args) -> int:
    import pandas as pd

    from harness.registry import discover_suites
    from harness.report import table

    folder = Path(args.dir) if args.dir else home.repo_suites_dir()
    rows = []
    for path in discover_suites(folder):
        try:
            suite = _load(str(path), allow_code=args.allow_code)
            rows.append({"suite": suite.name, "domains": len(suite.domains),
                         "slices": sum(len(d.slices) for d in suite.domains), "file": path.name, "status": "ok"})
        except KdhError as err:
            rows.append({"suite": path.stem, "domains": 0, "slices": 0, "file": path.name,
                         "status": f"invalid: {str(err).split(': ', 1)[-1][:80]}"})
    if not rows:
        print(f"no suite files (*.yaml) in {folder}")
        return 0
    print(table(pd.DataFrame(rows)))
    return 0


def cmd_suites_validate(args) -> int:
    from harness.registry import check_builtin_tasks

    suite = _load(args.file, allow_code=args.allow_code)
    check_builtin_tasks(suite)
    print(f"{suite.path}: ok · suite '{suite.name}' · {len(suite.domains)} domains · "
          f"{sum(len(d.slices) for d in suite.domains)} slices")
    for domain in suite.domains:
        slices = ", ".join(f"{s.name} ({s.metric}, {'higher' if s.higher_is_better else 'lower'} is better)"
                           for s in domain.slices)
        print(f"  {domain.name}: {slices}")
    return 0


def _options(args) -> dict:
    return {"dtype": args.dtype, "device": args.device}


def _ref(name: str, source: str, args):
    """A model named on the command line; ``models:/NAME@champion`` resolves to a local copy."""
    from harness import promotion
    from harness.models import ModelRef

    return ModelRef(name, promotion.resolve(str(source)), **_options(args))


def _scoring(args):
    from harness.scoring import ScoringOptions

    return ScoringOptions(limit=args.limit, batch_size=args.batch_size, allow_code=args.allow_code,
                          use_cache=not args.no_cache)


def cmd_eval(args) -> int:
    from harness import tracking
    from harness.loop import cached_note, evaluate, stamp
    from harness.models import ModelRef
    from harness.registry import check_builtin_tasks
    from harness.report import scorecard_report

    uri = tracking.connect(args.tracking_uri)  # a dead server fails now, not after the scoring
    suite = _load(args.suite or str(default_suite()), allow_code=args.allow_code)
    check_builtin_tasks(suite)
    if args.model:
        refs = [ModelRef.parse(spec, **_options(args)) for spec in args.model]
        refs = [_ref(r.name, r.source, args) for r in refs]
    else:
        world = demo_world()
        refs = [_ref("teacher", world.teacher_dir, args), _ref("student", world.student_dir, args)]
    if args.reference:
        names = [r.name for r in refs]
        if args.reference not in names:
            raise BadInput(f"--reference '{args.reference}' is not one of the models ({', '.join(names)})")
        refs.sort(key=lambda r: r.name != args.reference)  # the reference is scored first and kept first
    out = Path(args.out) if args.out else home.kdh_home() / "evals" / f"{suite.name}-{stamp()}"
    print(f"kdh eval · suite '{suite.name}' ({suite.path}) · models {', '.join(r.name for r in refs)} · "
          f"tracking {tracking.redact(uri)}", file=sys.stderr)
    scorecard, run_id = evaluate(suite, refs, _scoring(args), out, f"eval {suite.name}")
    print(f"scoring: {cached_note(scorecard)}", file=sys.stderr)
    print()
    print(scorecard_report(scorecard))
    print()
    print(f"Saved {out / 'scorecard.csv'} and scorecard.json, samples.csv beside it")
    print(f"MLflow: experiment kdh/{suite.name}, run {run_id} ({tracking.redact(uri)})")
    return 0


def cmd_gate(args) -> int:
    import pandas as pd

    from harness import loop, promotion, tracking
    from harness.gate import VERDICT_COLUMNS, Verdict
    from harness.models import ModelRef
    from harness.scorecard import Scorecard

    uri = tracking.connect(args.tracking_uri)
    suite = _load(args.suite or str(default_suite()), allow_code=args.allow_code)
    out = Path(args.out) if args.out else home.kdh_home() / "gates" / f"{suite.name}-{loop.stamp()}"
    scorecard = champion = None
    if args.scorecard:  # gate results already scored (names: teacher, candidate, champion)
        try:
            scorecard = Scorecard.load(Path(args.scorecard))
        except (OSError, ValueError, KeyError) as err:
            raise BadInput(f"--scorecard {args.scorecard}: not a kdh scorecard.json ({err})") from None
        sources = {m: p.get("source", m) for m, p in scorecard.models.items()}
        teacher = ModelRef(scorecard.reference, sources.get(scorecard.reference, ""))
        candidate = ModelRef("candidate", sources.get("candidate", "(missing)"))
        champion = ModelRef("champion", sources["champion"]) if "champion" in sources else None
    else:
        world = None if (args.teacher and args.candidate) else demo_world()
        teacher = _ref("teacher", args.teacher or world.teacher_dir, args)
        candidate = _ref("candidate", args.candidate or loop.newest_student(suite) or world.student_dir, args)
        registered = promotion.registered_name(suite.name)
        if args.champion and args.champion != "none":
            champion = _ref("champion", args.champion, args)
        elif args.champion is None and promotion.champion_version(registered) is not None:
            champion = _ref("champion", f"models:/{registered}@champion", args)
    print(f"kdh gate · suite '{suite.name}' · candidate {candidate.source} · champion "
          f"{champion.source if champion else 'none'} · tracking {tracking.redact(uri)}", file=sys.stderr)
    try:
        outcome = loop.gate(suite, teacher, candidate, champion, _scoring(args), out, args.junit, args.summary, scorecard)
    except KdhError as err:  # CI still gets a report that says the gate did not pass, and why
        failed = Verdict(pd.DataFrame(columns=VERDICT_COLUMNS), candidate.name, None, teacher.name)
        loop.write_verdict_files(failed.with_failures("gate", "run", [str(err)]), suite, None, args.junit, args.summary)
        raise
    print(loop.verdict_report(outcome.verdict))
    print(f"\nVerdict: {out / 'verdict.csv'} · MLflow run {outcome.run_id}"
          + (f" · JUnit {args.junit}" if args.junit else "") + (f" · summary {args.summary}" if args.summary else ""))
    return outcome.exit_code


def cmd_promote(args) -> int:
    from harness import loop, promotion, tracking
    from harness.models import ModelRef, fingerprint
    from harness.report import table

    tracking.connect(args.tracking_uri)
    suite = _load(args.suite or str(default_suite()))
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
    from harness import loop, tracking

    uri = tracking.connect(args.tracking_uri)
    suite = _load(args.suite or str(default_suite()))
    loop.distill_domains(suite)  # bad input fails now, not after the first scoring
    world = None if (args.teacher and args.student) else demo_world()
    teacher = _ref("teacher", args.teacher or world.teacher_dir, args)
    base = _ref("student", args.student or world.student_dir, args).source
    settings = loop.LoopSettings(rounds=args.rounds, steps=args.steps, batch_size=args.train_batch_size,
                                 kd_weight=args.kd_weight, interval=args.interval, seed=args.seed,
                                 promote=not args.no_promote)
    out = Path(args.out) if args.out else home.kdh_home() / "loop" / f"{suite.name}-{loop.stamp()}"
    print(f"kdh loop · suite '{suite.name}' · teacher {teacher.source} · base student {base} · "
          f"{args.rounds} round(s) · tracking {tracking.redact(uri)}", file=sys.stderr)
    started = time.perf_counter()
    code = loop.run_loop(suite, teacher, base, settings, _scoring(args), out, args.junit, args.summary)
    print(f"\nkdh loop: {'done' if code == 0 else 'the candidate was rejected'} in {time.perf_counter() - started:.0f} s · {out}")
    return code


def cmd_distill(args) -> int:
    import pandas as pd
    from accelerate import PartialState

    from distiller.trainer import DistillConfig, DistillError, distill
    from harness import tracking
    from harness.report import table

    import torch

    # Under a multi-process launch, one process tracks. Accelerate enters its multi-CPU mode only
    # when told it runs on the CPU, so say so where there is no GPU.
    main_process = PartialState(cpu=not torch.cuda.is_available()).is_main_process
    suite = _load(args.suite or str(default_suite()))
    missing = [d.name for d in suite.domains if d.train is None or d.validation is None]
    if missing:
        raise BadInput(f"{suite.path}: domain(s) {', '.join(missing)} need `train:` and `validation:` files to distil")
    domains = {d.name: (d.train, d.validation) for d in suite.domains}
    if args.teacher and args.student:
        teacher, student = args.teacher, args.student
    elif args.teacher or args.student:
        raise BadInput("give both --teacher and --student, or neither for the demo pair")
    else:
        world = demo_world(progress=main_process)
        teacher, student = str(world.teacher_dir), str(world.student_dir)
    for role, path in (("teacher", teacher), ("student", student)):
        if not (Path(path) / "config.json").is_file():
            raise BadInput(f"--{role} {path}: not a transformers model folder (no config.json)")
    out = args.out or str(home.kdh_home() / "distill" / f"{suite.name}-{args.mixture.split(':')[0]}-{time.strftime('%Y%m%d-%H%M%S')}")
    config = DistillConfig(
        teacher=teacher, student=student, output_dir=out, steps=args.steps, batch_size=args.batch_size,
        block_size=args.block_size, lr=args.lr, kd_weight=args.kd_weight, temperature=args.temperature,
        divergence=args.divergence, mixture=args.mixture, interval=args.interval, gaps_from=args.gaps_from,
        save_every=args.save_every, resume=args.resume, seed=args.seed, mixed_precision=args.mixed_precision)
    try:
        if not main_process:
            distill(config, domains)
            return 0
        uri = tracking.connect(args.tracking_uri)
        with tracking.tracked_run(suite.name, "distill", f"distill {args.mixture} γ={args.kd_weight}") as run:
            import mlflow

            mlflow.log_params({k: str(v) for k, v in vars(config).items()} | {"suite": suite.name})
            result = distill(config, domains)
            history = pd.DataFrame(result.history)
            mlflow.log_table(history, artifact_file="tables/ddk_history.json")
            mlflow.log_metrics({"tokens_per_s": result.tokens_per_s, "ddk_seconds": result.ddk_seconds,
                                "setup_seconds": result.setup_seconds,
                                "seconds": result.seconds, "ddk_share": result.ddk_seconds / max(result.seconds, 1e-9)})
            mlflow.log_artifacts(str(result.student_dir), artifact_path="student")
            mlflow.set_tag("kdh.student_dir", str(result.student_dir))
    except (DistillError, ValueError) as err:
        raise BadInput(str(err)) if isinstance(err, ValueError) else RuntimeFailure(str(err)) from err
    first, last = result.history[0], result.history[-1]
    summary = pd.DataFrame([{"domain": d, "weight at start": first[f"weight/{d}"], "weight at end": last[f"weight/{d}"],
                             "ppl ratio at start": first[f"ratio/{d}"], "ppl ratio at last update": last[f"ratio/{d}"]}
                            for d in domains])
    print(table(summary))
    print(f"\n{result.steps} steps · {result.tokens_per_s:,.0f} tokens/s · DDK's perplexities and updates "
          f"{100 * result.ddk_seconds / max(result.seconds, 1e-9):.1f}% of the loop (+{result.setup_seconds:.1f} s "
          "once for the teacher's perplexities)")
    print(f"Student: {result.student_dir}")
    print(f"MLflow: experiment kdh/{suite.name}, run {run.info.run_id} ({tracking.redact(uri)})")
    return 0


# --------------------------------------------------------------------------------------------
# Parser


def build_parser() -> argparse.ArgumentParser:
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

    ev = verbs.add_parser("eval", help="score models on a suite; log the scorecard to MLflow")
    ev.add_argument("--suite", help="suite file (default: suites/default.yaml)")
    ev.add_argument("--model", action="append", metavar="NAME=PATH",
                    help="a model to score (repeat; a folder or models:/NAME@ALIAS; default: the demo teacher and student)")
    ev.add_argument("--reference", help="the model retention is measured against (default: the first)")
    ev.add_argument("--out", help="folder for scorecard.csv/json (default: $KDH_HOME/evals/…)")
    _scoring_arguments(ev)
    ev.set_defaults(func=cmd_eval)

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
    _scoring_arguments(ga)
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
    _scoring_arguments(lo)
    lo.set_defaults(func=cmd_loop)

    di = verbs.add_parser("distill", help="distil the teacher into the student with DDK domain sampling")
    di.add_argument("--suite", help="suite whose domains' train/validation files are used (default: suites/default.yaml)")
    di.add_argument("--teacher", help="teacher model folder (default: the demo teacher)")
    di.add_argument("--student", help="student model folder to start from (default: the demo student)")
    di.add_argument("--out", help="output folder (default: $KDH_HOME/distill/…)")
    di.add_argument("--steps", type=int, default=300)
    di.add_argument("--batch-size", type=int, default=8)
    di.add_argument("--block-size", type=int, default=256)
    di.add_argument("--lr", type=float, default=2e-3)
    di.add_argument("--kd-weight", type=float, default=0.2, help="γ in CE + γ·KD; 0 is continued pre-training (CPT)")
    di.add_argument("--temperature", type=float, default=1.0)
    di.add_argument("--divergence", default="forward_kl",
                    help="forward_kl | reverse_kl | jsd | skew_kl | skew_reverse_kl | tv")
    di.add_argument("--mixture", default="ddk", help="ddk | ddk-no-smoothing | uniform | natural | fixed:code=0.4,…")
    di.add_argument("--interval", type=int, default=50, help="K: steps between mixture updates")
    di.add_argument("--gaps-from", help="initial ratios from a scorecard.json or an MLflow eval run id")
    di.add_argument("--save-every", type=int, default=100)
    di.add_argument("--resume", action="store_true", help="continue from the last good checkpoint in --out")
    di.add_argument("--seed", type=int, default=0)
    di.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"))
    di.add_argument("--tracking-uri")
    di.set_defaults(func=cmd_distill)
    return parser


def _scoring_arguments(parser) -> None:
    parser.add_argument("--limit", type=int, help="documents or items per slice (overrides the suite)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-cache", action="store_true", help="score every model again, even if unchanged")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the kdh home)")
    parser.add_argument("--allow-code", action="store_true", help="allow task files that run code (!function)")


def _quiet_libraries(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.ERROR
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("lm_eval", "lm-eval", "transformers", "datasets", "mlflow", "great_expectations", "alembic", "httpx"):
        logging.getLogger(name).setLevel(level)
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None) -> int:
    home.configure_environment()
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries(args.verbose)
    try:
        return args.func(args) or 0
    except KdhError as err:
        print(f"kdh: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("kdh: interrupted", file=sys.stderr)
        return EXIT_RUNTIME
    except Exception as err:  # a failure while running: say what, keep the traceback for -v
        if args.verbose:
            traceback.print_exc()
        print(f"kdh: failed while running: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
