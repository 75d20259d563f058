"""MLflow tracking: one experiment per suite, a parent run per command, a nested run per model.

Conventions (docs/architecture.md): tag ``kdh.kind`` on each run; metric names ``domain/slice/metric``
(lm-eval's ``acc,none`` keys are mapped, MLflow rejects commas); scorecards as table artifacts.
A run whose work raised ends FAILED (KILLED on Ctrl-C), never FINISHED.
"""

from __future__ import annotations

import math
import os
import re
import urllib.error
import urllib.request
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from harness import console, home
from harness.errors import BadInput
from harness.registry import Suite
from harness.scorecard import Scorecard

KIND_TAG = "kdh.kind"


def redact(uri: str) -> str:
    """The URI with any password replaced, for messages and the dashboard."""
    return re.sub(r"(://[^:/@]+):[^@/]+@", r"\1:***@", uri)


def connect(uri: str | None = None) -> str:
    """Point MLflow at ``uri`` (default: ``MLFLOW_TRACKING_URI``, else the kdh home's SQLite
    store) and check that a server answers before any work starts."""
    import mlflow

    uri = uri or home.tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(_health_request(uri), timeout=5) as reply:
                reply.read()
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise BadInput(f"the MLflow server at {redact(uri)} does not answer ({getattr(err, 'reason', err)}); "
                           "check that `mlflow server` runs there, or unset MLFLOW_TRACKING_URI to use the "
                           "local store") from None
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        _create_sqlite_store(uri)
    return uri


def _empty_store() -> Path:
    """An empty SQLite store with MLflow's tables, made once per MLflow version in the kdh home:
    MLflow's migrations take 5–7 s on 2 cores, a copy of their result milliseconds. Made beside its
    final path and renamed into place, so a reader never sees half of one."""
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path = home.kdh_home() / "cache" / f"mlflow-{mlflow.__version__}-empty.db"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        building = path.with_name(f".{path.name}.building-{os.getpid()}")
        try:
            # Creates the tables, and MLflow's "Default" experiment with its artifacts under the kdh
            # home (MLflow's own default is ./mlruns of whatever folder the store was made from).
            SqlAlchemyStore(f"sqlite:///{building}", home.artifact_root().as_uri()).engine.dispose()
            os.replace(building, path)  # two processes racing write the same tables; either copy serves
        finally:
            building.unlink(missing_ok=True)
    return path


def _create_sqlite_store(uri: str) -> None:
    """Create a new SQLite store whole or not at all, under a file lock. MLflow creates its tables on
    first use, neither atomically (a process killed meanwhile leaves a store no later run can
    open) nor under a lock (two processes starting together collide: "table … already exists").
    So kdh copies an empty store beside the final path and renames it into place."""
    import fcntl
    import shutil

    path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0]).resolve()
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():  # another process made it while this one waited
            return
        building = path.parent / f".{path.name}.building-{os.getpid()}"
        try:
            shutil.copyfile(_empty_store(), building)
            os.replace(building, path)
        finally:
            building.unlink(missing_ok=True)


def _health_request(uri: str) -> urllib.request.Request:
    """GET <server>/health, with credentials from the URI sent as basic auth (urllib does not read
    them from the URL; MLflow's client, through requests, does)."""
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{parts.port}" if parts.port else ""
    request = urllib.request.Request(urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", "")))
    if parts.username:
        user, password = unquote(parts.username), unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    return request


def experiment_id(suite_name: str) -> str:
    """The suite's experiment, created on first use. In a local store its artifacts go under the
    kdh home rather than MLflow's default ./mlruns in whatever folder the command ran from."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name = f"kdh/{suite_name}"
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        location = (home.artifact_root() / suite_name).as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:  # another process created it first
        return mlflow.get_experiment_by_name(name).experiment_id


def active() -> bool:
    """Whether a run is open (the next one then nests under it)."""
    import mlflow

    return mlflow.active_run() is not None


@contextmanager
def tracked_run(suite_name: str, kind: str, run_name: str, tags: dict | None = None, nested: bool = False):
    """An MLflow run that ends FINISHED only if its block completes."""
    import mlflow

    run = mlflow.start_run(experiment_id=experiment_id(suite_name), run_name=run_name, nested=nested,
                           tags={KIND_TAG: kind, "kdh.suite": suite_name, **(tags or {})})
    status = "FINISHED"
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.set_tag("kdh.error", "interrupted")
        status = "KILLED"
        raise
    except BaseException as err:
        mlflow.set_tag("kdh.error", f"{type(err).__name__}: {err}"[:5000])
        status = "FAILED"
        raise
    finally:
        _attach_log(nested)
        mlflow.end_run(status=status)


def _attach_log(nested: bool) -> None:
    """The libraries' output of this command (harness/console.py), kept with its outermost run. Best
    effort: a log that cannot be stored never hides how the run itself ended."""
    import mlflow

    log = console.log_path()
    if nested or log is None or not log.is_file():
        return
    try:
        mlflow.log_artifact(str(log), artifact_path="logs")
    except Exception as err:  # noqa: BLE001 - the run's own outcome matters more than its log
        console.note(f"kdh: the log {log} could not be stored with the run ({type(err).__name__}: {err})")


def library_versions() -> dict[str, str]:
    out = {}
    for package in ("kdh", "lm_eval", "transformers", "torch", "mlflow"):
        try:
            out[f"version.{package}"] = version(package.replace("_", "-"))
        except PackageNotFoundError:
            out[f"version.{package}"] = "unknown"
    return out


def metric_key(*parts: str) -> str:
    return "/".join(parts)


AGREEMENT_METRICS = ("top1_agreement", "kl_bits", "js_bits", "ece", "reference_ece")


def agreement_metrics(scorecard: Scorecard) -> dict[str, float]:
    """``<model>/<domain>/<figure>`` and ``<model>/<domain>/<slice>/<figure>`` for each agreement and
    calibration figure (harness/agreement.py); NaN (a pair that could not be aligned) left out."""
    out = {}
    for frame, parts in ((scorecard.agreement_domains, ("domain",)), (scorecard.agreement, ("domain", "slice"))):
        for row in frame.to_dict("records"):
            for figure in AGREEMENT_METRICS:
                if not math.isnan(row[figure]):
                    out[metric_key(row["model"], *(row[p] for p in parts), figure)] = float(row[figure])
    return out


def log_evaluation(scorecard: Scorecard, suite: Suite, saved: dict[str, Path]) -> None:
    """Log a validated scorecard into the active (parent) run, with a nested run per model."""
    import mlflow

    domains = scorecard.domains
    mlflow.log_params({"suite": suite.name, "suite.path": str(suite.path), "suite.fingerprint": scorecard.suite_fingerprint,
                       "reference": scorecard.reference, "models": ",".join(scorecard.model_names)})
    for path in saved.values():
        mlflow.log_artifact(str(path))
    mlflow.log_table(scorecard.rows, artifact_file="tables/scorecard.json")
    mlflow.log_table(domains, artifact_file="tables/domains.json")
    mlflow.log_table(scorecard.efficiency, artifact_file="tables/efficiency.json")
    mlflow.log_metrics({metric_key(row.model, row.domain, "retention"): row.retention for row in domains.itertuples()})
    if len(scorecard.agreement):
        mlflow.log_table(scorecard.agreement, artifact_file="tables/agreement.json")
        mlflow.log_metrics(agreement_metrics(scorecard))
    for model in scorecard.model_names:
        provenance = scorecard.models.get(model, {})
        with tracked_run(suite.name, "eval", model, tags={"kdh.model": model}, nested=True):
            mlflow.log_params({
                "model.name": model, "model.source": provenance.get("source", ""),
                "model.fingerprint": provenance.get("fingerprint", ""), "model.dtype": provenance.get("dtype", ""),
                "suite": suite.name, "suite.fingerprint": scorecard.suite_fingerprint, **library_versions(),
            })
            metrics = {}
            for row in scorecard.rows[scorecard.rows["model"] == model].itertuples():
                metrics[metric_key(row.domain, row.slice, row.metric)] = row.value
                if not math.isnan(row.stderr):
                    metrics[metric_key(row.domain, row.slice, f"{row.metric}_stderr")] = row.stderr
            for row in domains[domains["model"] == model].itertuples():
                metrics[metric_key(row.domain, "retention")] = row.retention
                metrics[metric_key(row.domain, "gap")] = row.gap
            for key, value in scorecard.efficiency[scorecard.efficiency["model"] == model].iloc[0].items():
                if key != "model":
                    metrics[metric_key("efficiency", key)] = float(value)
            mlflow.log_metrics(metrics)
            mlflow.log_table(scorecard.rows[scorecard.rows["model"] == model], artifact_file="tables/scorecard.json")
