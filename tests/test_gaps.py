"""The gap sources: a scorecard's (or an MLflow eval run's) retention → the ratios DDK starts from."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harness.errors import BadInput
from harness.gaps import ratios_from_mlflow, ratios_from_scorecard
from harness.scorecard import ROW_COLUMNS, Scorecard


def _row(model, domain, slice_, metric, value, higher):
    return dict(model=model, domain=domain, slice=slice_, metric=metric, value=value, stderr=math.nan,
                n=10, higher_is_better=higher, primary=True, weight=1.0)


def _card(student_math_acc=0.4):
    rows = pd.DataFrame([
        _row("teacher", "code", "ppl", "bits_per_byte", 1.0, False),
        _row("student", "code", "ppl", "bits_per_byte", 1.5, False),
        _row("teacher", "math", "mc", "acc", 0.8, True), _row("student", "math", "mc", "acc", student_math_acc, True),
    ], columns=ROW_COLUMNS)
    eff = pd.DataFrame([{"model": m, "parameters": 1, "bytes_on_disk": 1, "tokens_per_s": 1.0, "peak_memory_mb": 1.0,
                         "seconds": 1.0} for m in ("teacher", "student")])
    return Scorecard("s", "teacher", rows, eff)


def test_ratios_from_scorecard_are_one_over_retention(tmp_path):
    card = _card()
    # code: lower is better, retention = 1.0/1.5 → ratio 1.5 = student/teacher bits;
    # math: higher is better, retention = 0.4/0.8 → ratio 2 = teacher/student accuracy
    expected = {"code": 1.5, "math": 2.0}
    assert ratios_from_scorecard(card) == pytest.approx(expected)
    retention = card.domains.set_index(["model", "domain"])["retention"]
    assert ratios_from_scorecard(card)["math"] == pytest.approx(1 / retention[("student", "math")])
    paths = card.save(tmp_path)
    assert ratios_from_scorecard(paths["scorecard.json"]) == pytest.approx(expected)
    assert ratios_from_scorecard(str(tmp_path), domains=["math"]) == pytest.approx({"math": 2.0})
    assert ratios_from_scorecard(card, student="teacher") == pytest.approx({"code": 1.0, "math": 1.0})


def test_ratios_from_scorecard_errors():
    with pytest.raises(BadInput, match=r"no model 'candidate'.*\['teacher', 'student'\]"):
        ratios_from_scorecard(_card(), student="candidate")
    with pytest.raises(BadInput, match=r"no retention for domains \['law'\].*\['code', 'math'\]"):
        ratios_from_scorecard(_card(), domains=["code", "law"])
    with pytest.raises(BadInput, match="finite and > 0"):
        ratios_from_scorecard(_card(student_math_acc=0.0))


def test_ratios_from_mlflow_parent_and_model_runs(tmp_path):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    # A client, not the fluent API: no global tracking URI left behind for other tests.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("kdh/s", artifact_location=(tmp_path / "art").as_uri())
    retention = {"teacher": {"code": 1.0, "math": 1.0}, "student": {"code": 0.8, "math": 0.5}}

    def log(run_id, metrics):
        client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
        client.set_terminated(run_id)

    # the names harness/tracking.py logs: parent "<model>/<domain>/retention", nested "<domain>/…" + kdh.model
    parent = client.create_run(experiment, tags={"kdh.kind": "eval"}).info.run_id
    ids = {}
    for model, per in retention.items():
        ids[model] = client.create_run(experiment, tags={"kdh.kind": "eval", "kdh.model": model,
                                                         "mlflow.parentRunId": parent}).info.run_id
        log(ids[model], {f"{d}/retention": v for d, v in per.items()} | {f"{d}/gap": 1 - v for d, v in per.items()}
            | {f"{d}/mc/acc": 0.5 for d in per})
    log(parent, {f"{m}/{d}/retention": v for m, per in retention.items() for d, v in per.items()})
    expected = {"code": 1.25, "math": 2.0}
    assert ratios_from_mlflow(parent, tracking_uri=uri) == pytest.approx(expected)
    assert ratios_from_mlflow(ids["student"], tracking_uri=uri) == pytest.approx(expected)
    assert ratios_from_mlflow(ids["teacher"], tracking_uri=uri) == pytest.approx(expected)  # → the parent
    with pytest.raises(BadInput, match=r"no retention of model 'candidate'.*\['student', 'teacher'\]"):
        ratios_from_mlflow(parent, student="candidate", tracking_uri=uri)
    with pytest.raises(BadInput, match="not found"):
        ratios_from_mlflow("0" * 32, tracking_uri=uri)
