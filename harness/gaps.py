"""Per-domain gaps → the ratios DDK starts its mixture from.

A scorecard's retention is the share of the teacher's score the student keeps: ``teacher/student``
for lower-is-better metrics, ``student/teacher`` for higher-is-better ones. Its reciprocal is the
ratio DDK samples by. For a perplexity-type slice (perplexity, bits per byte) ``1/retention =
student/teacher`` is exactly DDK's ℓ_S/ℓ_T; for an accuracy slice it is ``teacher/student``, the
analogous "how far behind" factor (> 1 where the student lags). A domain mixing several slices uses
the reciprocal of their weighted-mean retention (docs/architecture.md, "gaps").

The distiller takes the ratios as plain values (``DistillConfig.initial_ratios``); where they came
from (a scorecard on disk, an MLflow eval run) is decided here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.errors import BadInput
from harness.scorecard import Scorecard


def initial_ratios(source: str, domains: Sequence[str]) -> dict[str, float]:
    """``--gaps-from``: a scorecard.json (or the folder holding it) if that path exists, else the id
    of an MLflow eval run; the ratio of each of ``domains``."""
    if Path(source).exists():
        return ratios_from_scorecard(source, domains=domains)
    return ratios_from_mlflow(source, domains=domains)


def _from_retention(retention: Mapping[str, float], domains: Sequence[str] | None, source: str) -> dict[str, float]:
    wanted = list(retention) if domains is None else list(domains)
    missing = [d for d in wanted if d not in retention]
    if missing:
        raise BadInput(f"{source}: no retention for domains {missing}; it has {sorted(retention)}")
    ratios = {d: 1.0 / float(retention[d]) if retention[d] > 0 else math.nan for d in wanted}
    bad = {d: retention[d] for d, v in ratios.items() if not math.isfinite(v)}  # NaN, <= 0, or so small 1/x is inf
    if bad:
        raise BadInput(f"{source}: retention must be finite and > 0 to give a ratio, got {bad}")
    return ratios


def ratios_from_scorecard(path_or_scorecard, student: str = "student",
                          domains: Sequence[str] | None = None) -> dict[str, float]:
    """``1 / retention`` of ``student`` per domain, from a Scorecard, the path of its scorecard.json
    or the folder holding it. ``domains`` picks (and requires) a subset; by default every domain
    the student was scored on."""
    card = path_or_scorecard
    if not isinstance(card, Scorecard):
        path = Path(card)
        card = Scorecard.load(path / "scorecard.json" if path.is_dir() else path)
    table = card.domains
    rows = table[table["model"] == student]
    if rows.empty:
        raise BadInput(f"the scorecard has no model {student!r}; it has {card.model_names}")
    retention = {row.domain: float(row.retention) for row in rows.itertuples()}
    return _from_retention(retention, domains, f"scorecard of suite {card.suite!r}, model {student!r}")


def ratios_from_mlflow(run_id: str, student: str = "student", tracking_uri: str | None = None,
                       domains: Sequence[str] | None = None) -> dict[str, float]:
    """``1 / retention`` per domain from an eval run: the parent eval run (metrics
    ``<model>/<domain>/retention``) or a nested model run (metrics ``<domain>/retention``, tag
    ``kdh.model``); a nested run of another model leads to its parent. ``tracking_uri`` defaults to
    kdh's (``MLFLOW_TRACKING_URI``, else the kdh home)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from harness import home

    client = MlflowClient(tracking_uri or home.tracking_uri())
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise BadInput(f"MLflow run {run_id!r} not found ({err.message}); the gaps come from a "
                       "scorecard.json path or an eval run's id") from None
    model = run.data.tags.get("kdh.model")
    parent = run.data.tags.get("mlflow.parentRunId")
    if model is not None and model != student and parent:
        run, model = client.get_run(parent), None
    metrics = run.data.metrics
    source = f"MLflow run {run.info.run_id}"
    if model == student:
        retention = {k[: -len("/retention")]: v for k, v in metrics.items()
                     if k.endswith("/retention") and k.count("/") == 1}
    else:
        # the parent: "<model>/<domain>/retention"; model names never hold "/" in kdh
        per_model: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == "retention":
                per_model.setdefault(parts[0], {})[parts[1]] = value
        if student not in per_model:
            raise BadInput(f"{source} has no retention of model {student!r}; it has models {sorted(per_model)}")
        retention = per_model[student]
    if not retention:
        raise BadInput(f"{source} (model {model!r}) logged no '<domain>/retention' metrics")
    return _from_retention(retention, domains, f"{source}, model {student!r}")
