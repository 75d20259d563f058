"""The steps every verb is made of: evaluate, gate, distil; and the two look-ups that connect them.

Each step runs under its own MLflow run (``kdh.kind`` eval, gate or distill), nested when a parent
(the loop's) is active, and ends FINISHED only if it completed. Scoring goes through the result
cache, so a teacher that has not changed is scored once. ``kdh eval``, ``kdh gate``, ``kdh distill``,
``kdh loop`` and the pytest plugin call these functions; none of them knows about another verb.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from harness import console, corpora, errors, home, tracking
from harness.console import note
from harness.errors import EXIT_GATE_FAILED, EXIT_PASS, BadInput, RuntimeFailure, ValidationFailed
from harness.gate import Verdict, contamination_rows, decide
from harness.models import ModelRef
from harness.registry import Suite
from harness.report import junit_xml, markdown_summary
from harness.scorecard import Scorecard
from harness.scoring import ScoringOptions, score_suite
from harness.validation import validate_scorecard

# --------------------------------------------------------------------------------------------
# Evaluate


def evaluate(suite: Suite, refs: list[ModelRef], options: ScoringOptions, out: Path,
             name: str, profile: bool = False) -> tuple[Scorecard, str]:
    """Score, validate, save and log (a nested ``eval`` run when a parent is active); with ``profile``,
    each model's generation profile too (harness/efficiency.py: profile.csv, logged)."""
    with tracking.tracked_run(suite.name, "eval", name, nested=tracking.active()) as run:
        scorecard = score_suite(suite, refs, options)
        validate_scorecard(scorecard, suite)  # raises before anything is logged as a success
        saved = scorecard.save(out)
        tracking.log_evaluation(scorecard, suite, saved)
        if profile:
            log_profile(refs, scorecard, out)
    return scorecard, run.info.run_id


def log_profile(refs: list[ModelRef], scorecard: Scorecard, out: Path) -> pd.DataFrame:
    """Profile every model's generation on prompts of the suite's own items; save and log it."""
    import mlflow

    from harness import efficiency

    prompts = scorecard.items.loc[scorecard.items["model"] == scorecard.reference, "prompt"]
    table = efficiency.profile(refs, list(dict.fromkeys(p for p in prompts if isinstance(p, str) and p.strip())))
    table.to_csv(out / "profile.csv", index=False)
    mlflow.log_artifact(str(out / "profile.csv"))
    mlflow.log_table(table, artifact_file="tables/profile.json")
    mlflow.log_metrics({f"{r.model}/profile/batch{r.batch}/{c}": float(getattr(r, c)) for r in table.itertuples()
                        for c in ("ttft_ms", "ms_per_token", "tokens_per_s", "peak_memory_mb")})
    return table


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
    trends: pd.DataFrame | None = None  # per domain over the champion versions and this candidate (harness/trends.py)
    recommendations: list[str] | None = None  # harness/recommend.py


def gate_analytics(suite: Suite, scorecard: Scorecard, contamination: pd.DataFrame | None) -> tuple[pd.DataFrame, list[str]]:
    """The candidate's trend (the champion versions' retention, then its own) and the recommendations.
    A store without a model registry has no versions: the trend then starts with the candidate."""
    from mlflow.exceptions import MlflowException

    from harness import recommend, trends

    try:
        history = trends.champion_history(suite.name)
    except MlflowException:
        history = pd.DataFrame(columns=trends.HISTORY_COLUMNS)
    mine = scorecard.domains[scorecard.domains["model"] == "candidate"]
    latest = int(history["version"].max()) + 1 if len(history) else 1
    history = pd.concat([history, pd.DataFrame({"version": latest, "domain": mine["domain"],
                                                "retention": mine["retention"]})], ignore_index=True)
    floors = {d.name: th.min_retention for d in suite.domains
              if (th := d.thresholds.over(suite.thresholds)).min_retention is not None}
    table = trends.trend_table(history, floors)
    worst = corpora.worst_per_slice(contamination) if contamination is not None else None
    return table, recommend.recommendations(scorecard, suite, "candidate", table, worst)


def write_verdict_files(verdict: Verdict, suite: Suite, scorecard: Scorecard | None,
                        junit: str | None, summary: str | None) -> None:
    if junit:
        Path(junit).parent.mkdir(parents=True, exist_ok=True)
        Path(junit).write_text(junit_xml(verdict, suite.name))
    if summary:
        Path(summary).parent.mkdir(parents=True, exist_ok=True)
        with open(summary, "a") as fh:  # append: $GITHUB_STEP_SUMMARY collects every step's part
            fh.write(markdown_summary(verdict, suite.name, scorecard))


def judge(suite: Suite, scorecard: Scorecard, champion: bool,
          contamination: pd.DataFrame | None = None) -> tuple[Verdict, int]:
    """The verdict and exit code over a scorecard of teacher, candidate (and champion), and, given
    the training corpus's ``contamination`` (harness/corpora.py), one check per test slice.

    A scorecard that fails validation is not trusted: its failures join the verdict as failing
    checks, so the gate fails (exit 1) and says why; it can never pass on such evidence."""
    verdict = decide(suite, scorecard, "candidate", "champion" if champion else None)
    if contamination is not None:
        verdict = verdict.with_rows(contamination_rows(suite, corpora.worst_per_slice(contamination)))
    try:
        validate_scorecard(scorecard, suite)
    except ValidationFailed as err:
        verdict = verdict.with_failures("scorecard", "valid", err.failures)
    return verdict, EXIT_PASS if verdict.passed else EXIT_GATE_FAILED


def gate(suite: Suite, teacher: ModelRef, candidate: ModelRef, champion: ModelRef | None, options: ScoringOptions,
         out: Path, junit: str | None = None, summary: str | None = None,
         scorecard: Scorecard | None = None, contamination: pd.DataFrame | None = None) -> GateOutcome:
    """Score teacher, candidate and champion (cached where unchanged), decide, report, log; with the
    training corpus's ``contamination`` report, check it against the suite's max_contamination."""
    import mlflow

    with tracking.tracked_run(suite.name, "gate", f"gate {candidate.name}", nested=tracking.active()) as run:
        if scorecard is None:
            refs = [replace(teacher, name="teacher"), replace(candidate, name="candidate")]
            refs += [replace(champion, name="champion")] if champion is not None else []
            scorecard = score_suite(suite, refs, options)
            note(f"  scoring: {cached_note(scorecard)}")
        verdict, code = judge(suite, scorecard, champion is not None or "champion" in scorecard.model_names,
                              contamination)
        saved = scorecard.save(out)
        verdict.rows.to_csv(out / "verdict.csv", index=False)
        write_verdict_files(verdict, suite, scorecard, junit, summary)
        trend_table, advice = gate_analytics(suite, scorecard, contamination)
        if summary:
            from harness.trends import markdown

            with open(summary, "a") as fh:
                fh.write(markdown(trend_table))
                fh.write("".join(["### Recommendations\n\n", *[f"- {line}\n" for line in advice], "\n"]) if advice else "")
        mlflow.log_table(trend_table, artifact_file="tables/trends.json")
        mlflow.set_tag("kdh.trend_alerts", ",".join(trend_table.loc[trend_table["alert"], "domain"]))
        mlflow.log_params({"suite": suite.name, "candidate.source": candidate.source,
                           "champion.source": champion.source if champion else "",
                           **{f"{m}.fingerprint": p.get("fingerprint", "") for m, p in scorecard.models.items()}})
        for path in (*saved.values(), out / "verdict.csv"):
            mlflow.log_artifact(str(path))
        mlflow.log_table(verdict.rows, artifact_file="tables/verdict.json")
        mlflow.log_table(scorecard.domains, artifact_file="tables/domains.json")
        if contamination is not None:
            mlflow.log_table(contamination, artifact_file="tables/contamination.json")
        mlflow.log_metrics({"gate/passed": float(verdict.passed), "gate/failures": float(len(verdict.failures))})
        mlflow.set_tags({"kdh.verdict": "pass" if verdict.passed else "fail",
                         "kdh.failing_domains": ",".join(verdict.failing_domains)})
    return GateOutcome(verdict, scorecard, code, run.info.run_id, out, trend_table, advice)


def passing_gate_run(suite_name: str, candidate_fingerprint: str) -> str | None:
    """The newest gate run that passed this exact candidate (by fingerprint), if any."""
    import mlflow

    runs = mlflow.search_runs(experiment_names=[f"kdh/{suite_name}"], output_format="list",
                              filter_string=f"tags.`{tracking.KIND_TAG}` = 'gate' and tags.`kdh.verdict` = 'pass' "
                                            "and attributes.status = 'FINISHED' "
                                            f"and params.`candidate.fingerprint` = '{candidate_fingerprint}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


# --------------------------------------------------------------------------------------------
# Distil


@dataclass
class DistillOutcome:
    result: object  # distiller.trainer.DistillResult
    run_id: str  # the distill run that holds the student
    source_uri: str  # the student's files in that run (what a promotion registers)


def distill(suite: Suite, config, run_name: str, params: dict | None = None, store: Path | None = None) -> DistillOutcome:
    """DDK distillation of ``config`` over the suite's domains, under a ``distill`` run (nested
    when a parent is active) that holds the settings, the mixture's history and the student. The
    data comes from ``store``, or from the suite's corpora prepared with the student's tokenizer
    (found in the kdh home when it was prepared before)."""
    import mlflow

    from distiller import trainer

    store = store or corpora.store_for(suite, config.student).root
    with tracking.tracked_run(suite.name, "distill", run_name, nested=tracking.active()) as run:
        mlflow.log_params({k: str(v) for k, v in vars(config).items()} | {"suite": suite.name, "store": str(store),
                                                                          **(params or {})})
        if classifier := labelled_by(store):  # the store's corpus was sorted into domains by `kdh classify`
            mlflow.set_tag("kdh.classifier", classifier)
        with errors.distill_errors():
            result = trainer.distill(config, store, [d.name for d in suite.domains],
                                     progress_stream=console.progress_stream())
        mlflow.log_table(pd.DataFrame(result.history), artifact_file="tables/ddk_history.json")
        mlflow.log_metrics({"tokens_per_s": result.tokens_per_s, "ddk_seconds": result.ddk_seconds,
                            "setup_seconds": result.setup_seconds, "seconds": result.seconds,
                            "ddk_share": result.ddk_seconds / max(result.seconds, 1e-9)})
        mlflow.log_artifacts(str(result.student_dir), artifact_path="student")
        mlflow.set_tag("kdh.student_dir", str(result.student_dir))
        if result.teacher_signal:  # trained from a stored signal: which one, and that no teacher ran
            mlflow.set_tag(SIGNAL_TAG, result.teacher_signal)
    return DistillOutcome(result, run.info.run_id, f"{run.info.artifact_uri.rstrip('/')}/student")


# --------------------------------------------------------------------------------------------
# The teacher's stored signal

SIGNAL_TAG = "kdh.teacher_signal"  # its fingerprint, on the runs that made or used a stored teacher signal


def teacher_signal(suite: Suite, teacher: str, student: str, store: Path, settings, out: Path | None = None,
                   device: str = "auto"):
    """Find or compute the teacher's sparse signal over ``store`` (distiller/teacher_signal.py) under a
    ``teacher-signal`` run (nested when a parent is active); by default content-addressed under
    ``$KDH_HOME/signals``, so every later round and every student of the vocabulary finds it. The run's
    tag ``kdh.teacher_ran`` says whether the teacher ran over the corpus this time."""
    import mlflow

    from distiller.teacher_signal import compute_signal

    with tracking.tracked_run(suite.name, "teacher-signal", f"teacher signal {settings.mode} k={settings.k}",
                              nested=tracking.active()):
        mlflow.log_params({f"signal.{k}": v for k, v in vars(settings).items()}
                          | {"teacher": teacher, "student": student, "store": str(store)})
        with errors.distill_errors():
            made = compute_signal(teacher, store, out, root=home.kdh_home() / "signals", settings=settings,
                                  student_dir=student, domains=[d.name for d in suite.domains], device=device,
                                  progress_stream=console.progress_stream())
        mlflow.log_metrics({"teacher_positions": made.positions, "seconds": made.seconds})
        mlflow.set_tags({SIGNAL_TAG: made.fingerprint, "kdh.teacher_ran": str(made.computed).lower(),
                         "kdh.signal_dir": str(made.root)})
    return made


def teacher_generations(suite: Suite, teacher: str, store: Path, settings):
    """Find or make the teacher's continuations for sequence-level KD (distiller/seqkd.py) under a
    ``teacher-generations`` run (nested when a parent is active), content-addressed under
    ``$KDH_HOME/generations``: every later run and loop round with the same inputs finds them."""
    import mlflow

    from distiller.seqkd import compute_generations

    with tracking.tracked_run(suite.name, "teacher-generations", f"teacher generations {settings.prompts}/domain",
                              nested=tracking.active()):
        mlflow.log_params({f"seq_kd.{k}": v for k, v in vars(settings).items()} | {"teacher": teacher,
                                                                                   "store": str(store)})
        with errors.distill_errors():
            made = compute_generations(teacher, store, home.kdh_home() / "generations", settings,
                                       [d.name for d in suite.domains], progress_stream=console.progress_stream())
        mlflow.set_tags({"kdh.generations": made.fingerprint, "kdh.teacher_ran": str(made.computed).lower(),
                         "kdh.generations_dir": str(made.root)})
    return made


def labelled_by(store: Path) -> str | None:
    """The fingerprint of the classifier that labelled a token store's corpus (docs/classify.md), if one did."""
    import json

    manifest = Path(store) / "manifest.json"
    if not manifest.is_file():
        return None  # not a store: the trainer says so
    try:
        return (json.loads(manifest.read_text()).get("provenance") or {}).get("classifier")
    except ValueError:
        return None


def newest_student(suite: Suite) -> Path | None:
    """The newest student a `kdh distill` or `kdh loop` wrote for this suite (what `kdh gate` checks
    by default)."""
    found = [p for pattern in (f"distill/{suite.name}-*/student", f"loop/{suite.name}-*/round-*/distill/student")
             for p in home.kdh_home().glob(pattern) if (p / "config.json").is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
