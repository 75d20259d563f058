"""The closed loop, and the steps it is made of: evaluate, gate, distil, promote.

Each step is a function a verb can call on its own (``kdh eval``, ``kdh gate``, ``kdh loop``);
each runs under its own MLflow run, nested when a parent (the loop's) is active. Scoring goes
through the result cache, so a teacher that has not changed is scored once.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from harness import home, promotion, tracking
from harness.errors import EXIT_GATE_FAILED, EXIT_PASS, BadInput, RuntimeFailure, ValidationFailed
from harness.gate import Verdict, decide
from harness.models import ModelRef
from harness.registry import Suite
from harness.report import junit_xml, markdown_summary, scorecard_report, table, verdict_report
from harness.scorecard import Scorecard
from harness.scoring import ScoringOptions, score_suite
from harness.validation import validate_scorecard


def say(text: str = "") -> None:
    print(text, flush=True)


def note(text: str) -> None:
    """Progress lines go to stderr, so stdout holds the tables a person (or a pipe) reads."""
    print(text, file=sys.stderr, flush=True)


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


# --------------------------------------------------------------------------------------------
# Evaluate


def evaluate(suite: Suite, refs: list[ModelRef], options: ScoringOptions, out: Path, name: str) -> tuple[Scorecard, str]:
    """Score, validate, save and log (a nested ``eval`` run when a parent is active)."""
    with tracking.tracked_run(suite.name, "eval", name, nested=tracking.active()) as run:
        scorecard = score_suite(suite, refs, options)
        validate_scorecard(scorecard, suite)  # raises before anything is logged as a success
        saved = scorecard.save(out)
        tracking.log_evaluation(scorecard, suite, saved)
    return scorecard, run.info.run_id


def cached_note(scorecard: Scorecard) -> str:
    return ", ".join(f"{m} {'from the cache' if p.get('cached') else 'scored'}" for m, p in scorecard.models.items())


# --------------------------------------------------------------------------------------------
# Gate


@dataclass
class GateOutcome:
    verdict: Verdict
    scorecard: Scorecard
    exit_code: int
    run_id: str
    out: Path


def write_verdict_files(verdict: Verdict, suite: Suite, scorecard: Scorecard | None,
                        junit: str | None, summary: str | None) -> None:
    if junit:
        Path(junit).parent.mkdir(parents=True, exist_ok=True)
        Path(junit).write_text(junit_xml(verdict, suite.name))
    if summary:
        Path(summary).parent.mkdir(parents=True, exist_ok=True)
        with open(summary, "a") as fh:  # append: $GITHUB_STEP_SUMMARY collects every step's part
            fh.write(markdown_summary(verdict, suite.name, scorecard))


def judge(suite: Suite, scorecard: Scorecard, champion: bool) -> tuple[Verdict, int]:
    """The verdict and exit code over a scorecard of teacher, candidate (and champion).

    A scorecard that fails validation is not trusted: its failures join the verdict as failing
    checks, so the gate fails (exit 1) and says why; it can never pass on such evidence."""
    verdict = decide(suite, scorecard, "candidate", "champion" if champion else None)
    try:
        validate_scorecard(scorecard, suite)
    except ValidationFailed as err:
        verdict = verdict.with_failures("scorecard", "valid", err.failures)
    return verdict, EXIT_PASS if verdict.passed else EXIT_GATE_FAILED


def gate(suite: Suite, teacher: ModelRef, candidate: ModelRef, champion: ModelRef | None, options: ScoringOptions,
         out: Path, junit: str | None = None, summary: str | None = None,
         scorecard: Scorecard | None = None) -> GateOutcome:
    """Score teacher, candidate and champion (cached where unchanged), decide, report, log."""
    with tracking.tracked_run(suite.name, "gate", f"gate {candidate.name}", nested=tracking.active()) as run:
        if scorecard is None:
            refs = [replace(teacher, name="teacher"), replace(candidate, name="candidate")]
            refs += [replace(champion, name="champion")] if champion is not None else []
            scorecard = score_suite(suite, refs, options)
            note(f"  scoring: {cached_note(scorecard)}")
        verdict, code = judge(suite, scorecard, champion is not None or "champion" in scorecard.model_names)
        saved = scorecard.save(out)
        verdict.rows.to_csv(out / "verdict.csv", index=False)
        write_verdict_files(verdict, suite, scorecard, junit, summary)
        import mlflow

        mlflow.log_params({"suite": suite.name, "candidate.source": candidate.source,
                           "champion.source": champion.source if champion else "",
                           **{f"{m}.fingerprint": p.get("fingerprint", "") for m, p in scorecard.models.items()}})
        for path in (*saved.values(), out / "verdict.csv"):
            mlflow.log_artifact(str(path))
        mlflow.log_table(verdict.rows, artifact_file="tables/verdict.json")
        mlflow.log_table(scorecard.domains, artifact_file="tables/domains.json")
        mlflow.log_metrics({"gate/passed": float(verdict.passed), "gate/failures": float(len(verdict.failures))})
        mlflow.set_tags({"kdh.verdict": "pass" if verdict.passed else "fail",
                         "kdh.failing_domains": ",".join(verdict.failing_domains)})
    return GateOutcome(verdict, scorecard, code, run.info.run_id, out)


# --------------------------------------------------------------------------------------------
# The loop


@dataclass
class LoopSettings:
    rounds: int = 1
    steps: int = 300
    batch_size: int = 8
    block_size: int = 256
    lr: float = 2e-3
    kd_weight: float = 0.2
    interval: int = 50
    seed: int = 0
    promote: bool = True


def weak_domains(scorecard: Scorecard, suite: Suite, model: str = "student") -> list[str]:
    """Domains where the model keeps less of the teacher's score than the suite asks."""
    retention = scorecard.domains.set_index(["model", "domain"])["retention"]
    weak = []
    for domain in suite.domains:
        floor = domain.thresholds.over(suite.thresholds).min_retention
        kept = retention.get((model, domain.name), float("nan"))
        if floor is not None and not kept >= floor:
            weak.append(domain.name)
    return weak


def distill_domains(suite: Suite) -> dict[str, tuple[Path, Path]]:
    missing = [d.name for d in suite.domains if d.train is None or d.validation is None]
    if missing:
        raise BadInput(f"{suite.path}: domain(s) {', '.join(missing)} need `train:` and `validation:` files to distil")
    return {d.name: (d.train, d.validation) for d in suite.domains}


@contextmanager
def distill_errors():
    """The distiller's errors as kdh's, for `kdh distill` and `kdh loop` alike: a ValueError is bad
    input (exit 2: a tokenizer mismatch, a flag out of range, unreadable data), a DistillError a
    failure while running (exit 3); kdh's own errors pass through with their codes."""
    from distiller.trainer import DistillError

    try:
        yield
    except ValueError as err:
        raise BadInput(str(err)) from err
    except DistillError as err:
        raise RuntimeFailure(str(err)) from err


def _distill_round(suite: Suite, teacher: ModelRef, student_dir: str, gaps: Path, settings: LoopSettings,
                   out: Path, round_no: int):
    """DDK distillation seeded with the scorecard's gaps, under a nested ``distill`` run."""
    import mlflow

    from distiller.trainer import DistillConfig, distill

    config = DistillConfig(teacher=teacher.source, student=student_dir, output_dir=str(out), steps=settings.steps,
                           batch_size=settings.batch_size, block_size=settings.block_size, lr=settings.lr,
                           kd_weight=settings.kd_weight, interval=settings.interval, gaps_from=str(gaps),
                           seed=settings.seed + round_no)
    with tracking.tracked_run(suite.name, "distill", f"distill round {round_no}", nested=True) as run:
        mlflow.log_params({k: str(v) for k, v in vars(config).items()} | {"suite": suite.name, "round": round_no})
        with distill_errors():
            result = distill(config, distill_domains(suite))
        mlflow.log_table(pd.DataFrame(result.history), artifact_file="tables/ddk_history.json")
        mlflow.log_metrics({"tokens_per_s": result.tokens_per_s, "seconds": result.seconds,
                            "ddk_share": result.ddk_seconds / max(result.seconds, 1e-9)})
        mlflow.log_artifacts(str(result.student_dir), artifact_path="student")
        source_uri = f"{run.info.artifact_uri}/student"
    return result, source_uri


def current_champion(suite: Suite, base_student: str) -> tuple[str, str]:
    """(local folder, label) of the registered champion, or of the base student when none is."""
    name = promotion.registered_name(suite.name)
    version = promotion.champion_version(name)
    if version is None:
        return base_student, "base student"
    return promotion.resolve(f"models:/{name}/{version.version}"), f"champion v{version.version}"


def run_loop(suite: Suite, teacher: ModelRef, base_student: str, settings: LoopSettings, options: ScoringOptions,
             out: Path, junit: str | None = None, summary: str | None = None) -> int:
    """Score → gaps → DDK distillation → score the candidate → gate → promote; ``rounds`` times
    while weak domains remain. Returns the exit code (0 promoted or nothing to do, 1 rejected)."""
    registered = promotion.registered_name(suite.name)
    exit_code, before, after = EXIT_PASS, None, None
    with tracking.tracked_run(suite.name, "loop", f"loop {suite.name}") as parent:
        import mlflow

        mlflow.log_params({"suite": suite.name, "teacher": teacher.source, "base_student": base_student,
                           **{f"loop.{k}": v for k, v in vars(settings).items()}})
        student_dir, label = current_champion(suite, base_student)
        for round_no in range(1, settings.rounds + 1):
            say(f"\n━━ Round {round_no}/{settings.rounds} · student: {label} ({student_dir})")
            round_out = out / f"round-{round_no}"
            note("  scoring the teacher and the student …")
            # Every model loads as the teacher does (dtype, device, what it may trust).
            card, _ = evaluate(suite, [replace(teacher, name="teacher"), replace(teacher, name="student", source=student_dir)],
                               options, round_out / "before", f"round {round_no}: teacher vs {label}")
            note(f"  scoring: {cached_note(card)}")
            before = before if before is not None else card
            weak = weak_domains(card, suite)
            say(f"  weak domains (below the suite's min_retention): {', '.join(weak) or 'none'}")
            if not weak and round_no > 1:
                say("  nothing left to retrain")
                break
            note(f"  distilling with DDK, {settings.steps} steps, seeded with the scorecard's gaps …")
            result, source_uri = _distill_round(suite, teacher, student_dir, round_out / "before" / "scorecard.json",
                                                settings, round_out / "distill", round_no)
            weights = ", ".join(f"{k.split('/', 1)[1]} {v:.2f}" for k, v in result.history[-1].items()
                                if k.startswith("weight/"))
            say(f"  distilled: {result.steps} steps, {result.tokens_per_s:,.0f} tokens/s · last DDK weights: {weights}")
            note("  gating the candidate …")
            outcome = gate(suite, teacher, replace(teacher, name="candidate", source=str(result.student_dir)),
                           replace(teacher, name="champion", source=student_dir), options, round_out / "gate", junit, summary)
            say(verdict_report(outcome.verdict))
            after = outcome.scorecard
            if not outcome.verdict.passed:
                exit_code = outcome.exit_code
                say(f"  the candidate stays at {result.student_dir}; the champion is unchanged")
                break
            if settings.promote:
                promoted = promotion.promote(result.student_dir, registered, source_uri=source_uri,
                                             tags={"kdh.loop_run": parent.info.run_id, "kdh.round": str(round_no),
                                                   "kdh.gate_run": outcome.run_id})
                say(f"  promoted: models:/{registered}@champion → version {promoted['version']}")
            # The next round starts from this candidate (the same bytes as the new champion).
            student_dir, label = str(result.student_dir), f"round {round_no}'s candidate"
        if after is not None:
            say("\n" + before_after(before, after))
            mlflow.log_table(before_after_frame(before, after), artifact_file="tables/before_after.json")
        mlflow.set_tag("kdh.verdict", "pass" if exit_code == EXIT_PASS else "fail")
    return exit_code


def before_after_frame(before: Scorecard, after: Scorecard) -> pd.DataFrame:
    """Per domain: the base student's and the candidate's retention of the teacher's score."""
    b = before.domains.set_index(["model", "domain"])["retention"]
    a = after.domains.set_index(["model", "domain"])["retention"]
    rows = [{"domain": d, "before": b.get(("student", d)), "after": a.get(("candidate", d))}
            for d in dict.fromkeys(before.rows["domain"])]
    frame = pd.DataFrame(rows)
    frame["change"] = frame["after"] - frame["before"]
    return frame.sort_values("before").reset_index(drop=True)


def before_after(before: Scorecard, after: Scorecard) -> str:
    return ("Retention of the teacher's score per domain, before → after\n\n" + table(before_after_frame(before, after))
            + "\n\n" + scorecard_report(after))


def newest_student(suite: Suite) -> Path | None:
    """The newest student a `kdh distill` or `kdh loop` wrote for this suite (what `kdh gate` checks
    by default)."""
    found = [p for pattern in (f"distill/{suite.name}-*/student", f"loop/{suite.name}-*/round-*/distill/student")
             for p in home.kdh_home().glob(pattern) if (p / "config.json").is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def passing_gate_run(suite_name: str, candidate_fingerprint: str) -> str | None:
    """The newest gate run that passed this exact candidate (by fingerprint), if any."""
    import mlflow

    runs = mlflow.search_runs(experiment_names=[f"kdh/{suite_name}"], output_format="list",
                              filter_string=f"tags.`{tracking.KIND_TAG}` = 'gate' and tags.`kdh.verdict` = 'pass' and attributes.status = 'FINISHED' "
                                            f"and params.`candidate.fingerprint` = '{candidate_fingerprint}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None
