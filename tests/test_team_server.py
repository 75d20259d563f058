"""The team setup of docs/deployment.md, for real: PostgreSQL behind `mlflow server --serve-artifacts`
(tests/servers.py starts both once per session), kdh pointed at it by MLFLOW_TRACKING_URI with
credentials in it. What a team relies on: the whole loop works against it (eval → loop, which
promotes → promote --list → rollback → gate → the dashboard's data), every file goes up to and
comes back from the server, concurrent writers lose nothing, racing promotions leave one champion,
and the password never shows."""

from __future__ import annotations

import json
import os

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from processes import finish
from servers import (
    SECRET,
    check_no_run_and_no_metric_lost,
    check_races,
    kdh_in_process,
    model_variants,
    race_names,
    race_promotions,
    start_writers,
    suite_copy,
)

from harness import model_uris, promotion, tracking
from harness.errors import BadInput
from harness.models import ModelRef, fingerprint

ROUNDS = 8
# The servers here stop: the tracking URI must not outlive them.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("own_tracking_uri")]


def fp(folder) -> str:
    return fingerprint(ModelRef("m", str(folder)))


@pytest.fixture(scope="module")
def team(team_server, tiny_world, lenient_suite, tmp_path_factory):
    """A team member's session against the server: MLFLOW_TRACKING_URI set, then one kdh command
    after another, each as `kdh ARGS` would run it (its output captured at the file descriptors)."""
    folder = tmp_path_factory.mktemp("team")
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = team_server.uri
    suite = ["--suite", str(lenient_suite)]
    steps = {}
    try:
        steps["eval"] = kdh_in_process(["eval", *suite, "--limit", "3", "--out", str(folder / "eval")])
        steps["loop"] = kdh_in_process(["loop", *suite, "--rounds", "1", "--steps", "6", "--interval", "3",
                                        "--limit", "3", "--out", str(folder / "loop")])
        # A second version, so that there is a champion to roll back from.
        steps["promote"] = kdh_in_process(["promote", *suite, "--force", "--candidate", str(tiny_world.student_dir)])
        steps["list"] = kdh_in_process(["promote", *suite, "--list"])
        steps["rollback"] = kdh_in_process(["promote", *suite, "--rollback"])
        steps["gate"] = kdh_in_process(["gate", *suite, "--candidate", str(folder / "loop" / "round-1" / "distill" / "student"),
                                        "--limit", "3", "--out", str(folder / "gate")])
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    mlflow.set_tracking_uri(team_server.uri)
    return steps, folder, team_server


def test_every_step_of_the_loop_works_against_the_server(team):
    steps, _, _ = team
    for step, (code, out, err) in steps.items():
        assert code == 0, f"kdh {step} exited {code}:\n{out[-2000:]}\n{err[-3000:]}"


def test_the_loop_promotes_its_candidate_and_the_champion_downloads_through_the_server(team, tmp_path):
    steps, folder, server = team
    assert "promoted: models:/kdh-default@champion → version 1" in steps["loop"][1] + steps["loop"][2]
    candidate = folder / "loop" / "round-1" / "distill" / "student"
    v1 = MlflowClient().get_model_version("kdh-default", "1")
    # Its files are the distillation run's, proxied by the server, and its run is that run.
    assert v1.source.startswith("mlflow-artifacts:/") and v1.source.endswith("/artifacts/student")
    distill = MlflowClient().get_run(v1.run_id)
    assert distill.data.tags["kdh.kind"] == "distill"
    assert v1.tags["kdh.fingerprint"] == fp(candidate)
    # After the second promotion and the rollback, the alias is back on the loop's candidate.
    local = model_uris.resolve("models:/kdh-default@champion")
    assert local.endswith(os.path.join("models", "kdh-default", "1")) and fp(local) == fp(candidate)
    stored = list(server.artifacts.rglob("student/*.safetensors"))  # where the server keeps them
    assert stored and any(fp(path.parent) == fp(candidate) for path in stored)


def test_promote_list_and_rollback_show_and_move_the_champion(team, tiny_world):
    steps, _, _ = team
    assert "models:/kdh-default@champion → version 2 (was 1)" in steps["promote"][1]
    listed = steps["list"][1]
    assert "version" in listed and "champion" in listed
    assert "models:/kdh-default@champion: version 2 → 1 (rolled back)" in steps["rollback"][1]
    history = promotion.history("kdh-default")
    assert history["version"].tolist() == [2, 1] and history["champion"].tolist() == [False, True]
    assert history["previous_champion"].tolist() == ["1", ""] and history["rolled_back_at"].iloc[0]
    assert history["fingerprint"].iloc[0] == fp(tiny_world.student_dir)


def test_the_gate_judges_against_the_champion_it_downloads(team):
    from harness.scorecard import Scorecard

    _, folder, _ = team
    card = Scorecard.load(folder / "gate")  # the champion by default: models:/kdh-default@champion, v1 again
    assert card.models["champion"]["fingerprint"] == fp(folder / "loop" / "round-1" / "distill" / "student")
    assert (folder / "gate" / "verdict.csv").is_file()


def test_the_dashboard_reads_every_run_from_the_server(team):
    import streamlit as st

    from dashboards import data

    _, _, server = team
    st.cache_data.clear()
    assert data.store_problem(server.uri) is None
    experiments = data.experiments(server.uri)
    exp_id = experiments.set_index("suite").loc["default", "experiment_id"]
    runs = data.runs(server.uri, exp_id)
    assert {"eval", "loop", "distill", "gate", "promote"} <= set(runs["kind"])
    assert (runs["status"] == "FINISHED").all()
    gate_run = runs[runs["kind"] == "gate"]
    gate_run = gate_run[gate_run["parent"] == ""]["run_id"].iloc[0]  # the standalone `kdh gate`
    card = data.scorecard(server.uri, gate_run)
    assert {"teacher", "candidate", "champion"} <= set(card.models)
    assert not data.table(server.uri, gate_run, "tables/verdict.json").empty
    distill = runs[runs["kind"] == "distill"]["run_id"].iloc[0]
    assert not data.metric_history(server.uri, distill, ("loss",)).empty
    promotions = data.promotions(server.uri, "default")
    assert promotions["version"].tolist() == [2, 1] and promotions["champion"].tolist() == [False, True]
    st.cache_data.clear()


def test_the_password_in_the_tracking_uri_never_shows(team):
    steps, _, _ = team
    for code, out, err in steps.values():
        assert SECRET not in out + err
    assert "kdh:***@127.0.0.1" in steps["eval"][2]  # the URI is shown, redacted
    runs = mlflow.search_runs(experiment_names=["kdh/default"], output_format="list")
    for run in runs:
        assert SECRET not in json.dumps({**run.data.params, **run.data.tags})


def test_promote_names_the_run_that_holds_the_files(team_server, tiny_world, tmp_path):
    """The loop's case, through the API: the files were logged by one run (the distillation), the
    promotion happens in another (the loop). The version's run must be the one holding its source:
    the server refuses anything else."""
    tracking.connect(team_server.uri)
    experiment = tracking.experiment_id("team-direct")
    (folder,) = model_variants(tiny_world.student_dir, tmp_path, 1)
    with mlflow.start_run(experiment_id=experiment) as distill:
        mlflow.log_artifacts(str(folder), artifact_path="student")
    source = f"{distill.info.artifact_uri}/student"
    assert source.startswith("mlflow-artifacts:/")
    with mlflow.start_run(experiment_id=experiment) as loop:
        with pytest.raises(MlflowException, match="must identify the resource that contains the source"):
            MlflowClient().create_model_version("kdh-team-direct-raw", source, run_id=loop.info.run_id)
        with pytest.raises(BadInput, match=f"not among the artifacts of run {loop.info.run_id}"):
            promotion.promote(folder, "kdh-team-direct", source_uri=source, source_run_id=loop.info.run_id)
        first = promotion.promote(folder, "kdh-team-direct", source_uri=source, source_run_id=distill.info.run_id)
        second = promotion.promote(folder, "kdh-team-direct", source_uri=source)  # the run is found from the URI
    for promoted, version in ((first, 1), (second, 2)):
        assert promoted["version"] == version and promoted["run_id"] == distill.info.run_id
        stored = MlflowClient().get_model_version("kdh-team-direct", str(version))
        assert stored.run_id == distill.info.run_id and stored.source == source
    assert fp(model_uris.resolve("models:/kdh-team-direct@champion")) == fp(folder)


def test_three_concurrent_writers_lose_no_run_and_no_metric(team_server, tiny_world, tmp_path):
    suite = suite_copy(tmp_path / "suite", "team-writers")
    results = finish(start_writers(team_server.uri, tmp_path, evals=2, suite=suite))
    check_no_run_and_no_metric_lost(results, tmp_path, team_server.uri, experiment="kdh/team-writers")
    for _, out, err in results:
        assert SECRET not in out + err


def test_two_promotions_racing_leave_exactly_one_champion(team_server, tiny_world, tmp_path):
    """As tests/test_concurrency.py's, against PostgreSQL: there, two inserts of the alias collide
    on its primary key (`duplicate key value violates unique constraint`)."""
    candidates = model_variants(tiny_world.student_dir, tmp_path, 2)
    names = race_names("kdh-team-race", ROUNDS)
    per_round, snapshots = race_promotions(team_server.uri, candidates, names, tmp_path)
    assert check_races(per_round, snapshots, names, [fp(c) for c in candidates]) == ROUNDS
    mlflow.set_tracking_uri(team_server.uri)
    for name in set(names):
        assert promotion.history(name)["champion"].sum() == 1
