"""What the dashboard reads from MLflow, as DataFrames. Read-only: nothing here writes to the store.

Every query is cached with ``st.cache_data`` keyed by the tracking URI and its arguments, so a rerun
(each click in Streamlit reruns the script) reads the store once per ``ttl``: run lists and metric
histories for ``LIST_TTL`` seconds (runs in progress keep changing), the artifacts of a run for
``RUN_TTL`` (a finished run's scorecard does not change). A store with thousands of runs is read in
one paged query per suite (docs/dashboard.md has the figures).

Naming follows what kdh writes (harness/tracking.py, harness/loop.py, harness/cli.py): experiment
``kdh/<suite>``, tag ``kdh.kind`` = eval | distill | gate | loop | promote, scorecards as
``scorecard.json`` (harness.scorecard's format), verdicts as ``tables/verdict.json``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import streamlit as st

from harness import promotion, tracking
from harness.errors import BadInput
from harness.scorecard import Scorecard

LIST_TTL = 60
RUN_TTL = 3600
PAGE = 5000  # runs per search request; the SQL store allows up to 50,000
RUN_COLUMNS = ["run_id", "name", "kind", "suite", "reference", "parent", "status", "start", "end", "verdict",
               "failing_domains", "models", "error"]


class DataMissing(Exception):
    """A run lacks what a view needs (an artifact kdh did not log, or a run from another tool)."""


# --------------------------------------------------------------------------------------------
# The store


def store_problem(uri: str) -> tuple[str, str] | None:
    """None if the store can be read; else (kind, message): kind "empty" for a local store that
    does not exist yet (nothing to show, not an error), "unreachable" or "error" otherwise.

    A missing SQLite file is reported, not opened: MLflow would create it, and the dashboard
    writes nothing."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = uri.split("sqlite:///", 1)[-1]
        if path != ":memory:" and not Path(path).is_file():
            return "empty", f"there is no store at {path} yet"
    try:
        tracking.connect(uri)  # a dead http(s) server: BadInput with a message that says what to do
        _client(uri).search_experiments(max_results=1)
    except BadInput as err:
        return "unreachable", str(err)
    except Exception as err:  # noqa: BLE001  a bad scheme, a database not MLflow's, …: name the store, say why
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        return "error", f"could not read the MLflow store at {tracking.redact(uri)}: {tracking.redact(text)}"
    return None


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@st.cache_data(ttl=LIST_TTL, show_spinner=False)
def experiments(uri: str) -> pd.DataFrame:
    """The suites in the store: one experiment ``kdh/<suite>`` each, sorted by name."""
    rows = [{"experiment_id": e.experiment_id, "suite": e.name.split("/", 1)[1], "name": e.name}
            for e in _client(uri).search_experiments(max_results=50000) if e.name.startswith("kdh/")]
    return pd.DataFrame(rows, columns=["experiment_id", "suite", "name"]).sort_values("suite", ignore_index=True)


def _models_text(run) -> str:
    """The model names and sources a run mentions, for the "model" filter (a substring search)."""
    params = run.data.params
    names = params.get("models", "").split(",")  # an eval's names; a gate's come with its fingerprints
    names += [k.rsplit(".", 1)[0] for k in params if k.endswith(".fingerprint") and k != "suite.fingerprint"]
    sources = [v for k, v in params.items()
               if k in ("candidate.source", "champion.source", "teacher", "student", "base_student")]
    return " ".join(dict.fromkeys(x for x in names + sources if x))


def _search(client, experiment_id: str) -> list:
    """Every active run but an eval's per-model children: their numbers are in the parent's
    scorecard, and they hold most of a store's metrics (half the query's time with thousands of
    runs). A server too old for IS NULL gets the plain query; ``runs`` drops the children then."""
    from mlflow.exceptions import MlflowException

    def pages(where: str):
        token = None
        while True:
            page = client.search_runs([experiment_id], where, max_results=PAGE, page_token=token,
                                      order_by=["attributes.start_time DESC"])
            yield from page
            token = page.token
            if not token:
                return

    try:
        return list(pages("tags.`kdh.model` IS NULL"))
    except MlflowException:
        return list(pages(""))


@st.cache_data(ttl=LIST_TTL, show_spinner="Reading runs …")
def runs(uri: str, experiment_id: str) -> pd.DataFrame:
    """The active runs of one suite, newest first (an eval's per-model children left out):
    RUN_COLUMNS plus ``metrics.<key>``, the latest value of each metric."""
    rows, metrics = [], []
    for run in _search(_client(uri), experiment_id):
        tags, info = run.data.tags, run.info
        if tags.get("kdh.model"):
            continue
        rows.append({"run_id": info.run_id, "name": tags.get("mlflow.runName", info.run_id[:8]),
                     "kind": tags.get(tracking.KIND_TAG, ""), "suite": tags.get("kdh.suite", ""),
                     "reference": run.data.params.get("reference", ""), "parent": tags.get("mlflow.parentRunId", ""),
                     "status": info.status, "start": info.start_time, "end": info.end_time,
                     "verdict": tags.get("kdh.verdict", ""), "failing_domains": tags.get("kdh.failing_domains", ""),
                     "models": _models_text(run), "error": tags.get("kdh.error", "")})
        metrics.append(run.data.metrics)
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    frame["start"] = pd.to_datetime(frame["start"], unit="ms", utc=True)
    frame["end"] = pd.to_datetime(frame["end"], unit="ms", utc=True)
    values = pd.DataFrame(metrics).add_prefix("metrics.")
    frame = pd.concat([frame, values], axis=1)
    frame.attrs["read_at"] = pd.Timestamp.now().strftime("%H:%M:%S")  # the sidebar says how fresh it is
    return frame


# --------------------------------------------------------------------------------------------
# One run's artifacts


def _download(uri: str, run_id: str, path: str, folder: str) -> Path:
    from mlflow.exceptions import MlflowException

    try:
        return Path(_client(uri).download_artifacts(run_id, path, dst_path=folder))
    except (MlflowException, OSError) as err:
        raise DataMissing(f"run {run_id[:8]} has no {path} ({str(err).splitlines()[0][:160]})") from None


@st.cache_data(ttl=RUN_TTL, show_spinner=False)
def scorecard(uri: str, run_id: str) -> Scorecard:
    """The scorecard an eval or gate run logged (``scorecard.json``, harness.scorecard's format)."""
    with tempfile.TemporaryDirectory(prefix="kdh-dashboard-") as folder:
        path = _download(uri, run_id, "scorecard.json", folder)
        try:
            return Scorecard.load(path)
        except (BadInput, ValueError, KeyError) as err:
            raise DataMissing(f"run {run_id[:8]}: scorecard.json is not a kdh scorecard ({err})") from None


@st.cache_data(ttl=RUN_TTL, show_spinner=False)
def table(uri: str, run_id: str, path: str) -> pd.DataFrame:
    """A table artifact logged with ``mlflow.log_table`` (e.g. ``tables/verdict.json``)."""
    with tempfile.TemporaryDirectory(prefix="kdh-dashboard-") as folder:
        data = json.loads(_download(uri, run_id, path, folder).read_text())
    return pd.DataFrame(data["data"], columns=data["columns"])


@st.cache_data(ttl=LIST_TTL, show_spinner=False)
def metric_history(uri: str, run_id: str, keys: tuple[str, ...]) -> pd.DataFrame:
    """Every logged value of the given metrics: key, step, value, time (long format)."""
    client = _client(uri)
    rows = [{"key": key, "step": m.step, "value": m.value, "time": m.timestamp}
            for key in keys for m in client.get_metric_history(run_id, key)]
    frame = pd.DataFrame(rows, columns=["key", "step", "value", "time"])
    frame["time"] = pd.to_datetime(frame["time"], unit="ms", utc=True)
    return frame


@st.cache_data(ttl=LIST_TTL, show_spinner=False)
def promotions(uri: str, suite: str) -> pd.DataFrame:
    """harness.promotion.history of ``kdh-<suite>``: one row per registered version, newest first."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(uri)  # harness.promotion reads the registry of the current URI
    try:
        return promotion.history(promotion.registered_name(suite))
    except MlflowException:  # a store without a registry (e.g. a tracking-only server)
        return pd.DataFrame(columns=promotion.HISTORY_COLUMNS)


def clear() -> None:
    """Forget every cached read (the sidebar's refresh button)."""
    st.cache_data.clear()


def default_uri(argv: list[str]) -> str:
    """``--tracking-uri`` from the script's arguments, else what every kdh verb uses
    (``MLFLOW_TRACKING_URI``, else the kdh home's SQLite store)."""
    import argparse

    from harness import home

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--tracking-uri")
    # parse_known_args: under AppTest the script sees pytest's arguments
    known, _ = parser.parse_known_args(argv)
    return known.tracking_uri or home.tracking_uri()
