"""`kdh eval` end to end on the tiny demo world: real lm-eval runs, real GX validation, a real
SQLite MLflow store. What a user relies on: the scorecard covers every domain for both models, it
lands in MLflow as nested per-model runs, and a failed evaluation is never marked finished."""

from __future__ import annotations

import shutil

import mlflow
import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.cli import main
from harness.demo import DOMAINS
from harness.models import ModelRef, fingerprint
from harness.scorecard import Scorecard


def runs_in(uri: str, suite: str = "default"):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[f"kdh/{suite}"])


@pytest.fixture(scope="module")
def evaluated(tiny_world, tmp_path_factory):
    """One `kdh eval` with no model arguments (the demo teacher and student)."""
    folder = tmp_path_factory.mktemp("eval")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    code = main(["eval", "--limit", "6", "--out", str(folder / "out"), "--tracking-uri", uri])
    return code, folder, uri, tiny_world


def test_eval_writes_a_scorecard_for_every_domain_and_model(evaluated):
    code, folder, _, world = evaluated
    assert code == 0
    card = Scorecard.load(folder / "out" / "scorecard.json")
    assert card.model_names == ["teacher", "student"] and card.reference == "teacher"
    assert set(card.rows["domain"]) == set(DOMAINS)
    primary = card.rows[card.rows["primary"]]
    assert len(primary) == 2 * 2 * len(DOMAINS)  # two models × two slices × each domain
    assert (primary["n"] == 6).all()
    assert primary.set_index(["model", "domain", "slice"])["metric"].xs("ppl", level="slice").eq("bits_per_byte").all()
    domains = card.domains.set_index(["model", "domain"])
    assert (domains.loc["teacher", "retention"] == 1.0).all()
    assert domains.loc["student", "retention"].notna().all()
    eff = card.efficiency.set_index("model")
    assert eff.loc["teacher", "parameters"] > eff.loc["student", "parameters"] > 0
    assert (eff["tokens_per_s"] > 0).all() and (eff["peak_memory_mb"] > 0).all()
    assert card.models["student"]["fingerprint"] == fingerprint(ModelRef("student", str(world.student_dir)))
    for name in ("scorecard.csv", "domains.csv", "efficiency.csv"):
        assert (folder / "out" / name).stat().st_size > 0


def test_mlflow_holds_a_parent_run_and_a_nested_run_per_model(evaluated):
    code, folder, uri, world = evaluated
    runs = runs_in(uri)
    assert (runs["status"] == "FINISHED").all() and (runs["tags.kdh.kind"] == "eval").all()
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(parents) == 1 and set(children["tags.kdh.model"]) == {"teacher", "student"}
    assert (children["tags.mlflow.parentRunId"] == parents["run_id"].iloc[0]).all()
    card = Scorecard.load(folder / "out" / "scorecard.json")
    for index in children.index:
        metrics = runs.loc[index]
        for domain in DOMAINS:
            assert metrics[f"metrics.{domain}/ppl/bits_per_byte"] > 0
            assert 0 < metrics[f"metrics.{domain}/retention"] < 10
        assert metrics["params.model.fingerprint"] == card.models[metrics["tags.kdh.model"]]["fingerprint"]
        assert metrics["params.suite.fingerprint"] == card.suite_fingerprint
        assert metrics["params.version.lm_eval"] not in ("", "unknown")
    student = children[children["tags.kdh.model"] == "student"].iloc[0]
    rows = card.rows.query("model == 'student' and slice == 'ppl' and metric == 'bits_per_byte'")
    for row in rows.itertuples():
        assert student[f"metrics.{row.domain}/ppl/bits_per_byte"] == pytest.approx(row.value)
    table = mlflow.MlflowClient().load_table(parents["experiment_id"].iloc[0], "tables/scorecard.json",
                                             run_ids=[parents["run_id"].iloc[0]])
    assert len(table) == len(card.rows)


def test_a_broken_model_fails_validation_exits_2_and_nothing_is_marked_finished(tiny_world, tmp_path, capsys):
    """A student whose weights hold NaN scores NaN: validation must stop it, the MLflow run must
    end FAILED and no scorecard is written as if it were good."""
    broken = tmp_path / "broken-student"
    shutil.copytree(tiny_world.student_dir, broken)
    weights = load_file(broken / "model.safetensors")
    first = next(iter(weights))
    weights[first] = torch.full_like(weights[first], float("nan"))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["eval", "--limit", "3", "--model", f"teacher={tiny_world.teacher_dir}",
                 "--model", f"student={broken}", "--out", str(tmp_path / "out"), "--tracking-uri", uri])
    assert code == 2
    err = capsys.readouterr().err
    assert "failed" in err and "validation check" in err and "value must not be missing" in err
    assert not (tmp_path / "out" / "scorecard.json").exists()
    runs = runs_in(uri)
    assert len(runs) == 1 and runs["status"].iloc[0] == "FAILED"
    assert "ValidationFailed" in runs["tags.kdh.error"].iloc[0]


def test_bad_model_path_and_dead_server_are_bad_input(tiny_world, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["eval", "--model", "student=/no/such/model", "--tracking-uri", uri]) == 2
    assert "/no/such/model does not exist" in capsys.readouterr().err
    assert main(["eval", "--tracking-uri", "http://127.0.0.1:9"]) == 2
    assert "http://127.0.0.1:9 does not answer" in capsys.readouterr().err


def test_kdh_demo_shows_the_world_per_domain(tiny_world, capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert str(tiny_world.root) in out and "teacher bpb" in out
    for domain in DOMAINS:
        assert domain in out
