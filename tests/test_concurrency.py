"""Several kdh processes at once against one real `mlflow server` on loopback, and against the
default SQLite store. What a user relies on: no run and no metric is lost, two promotions racing
leave exactly one champion, and credentials in the tracking URI never reach logs or params.
(The same against PostgreSQL with proxied artifacts: tests/test_team_server.py.)"""

from __future__ import annotations

import json

import mlflow
import pytest
from servers import (
    SECRET,
    check_no_run_and_no_metric_lost,
    check_races,
    finish,
    kdh,
    model_variants,
    race_names,
    race_promotions,
    start_writers,
)

from harness import promotion
from harness.models import ModelRef, fingerprint

ROUNDS = 20
# The servers here stop: the tracking URI must not outlive them.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("own_tracking_uri")]


@pytest.fixture(scope="module")
def concurrent(sqlite_server, tiny_world, tmp_path_factory):
    """Two `kdh eval` and a `kdh distill` process started together against the server."""
    uri, _ = sqlite_server
    folder = tmp_path_factory.mktemp("concurrent")
    return finish(start_writers(uri, folder, evals=2)), folder, uri


def test_concurrent_runs_lose_no_run_and_no_metric(concurrent):
    results, folder, uri = concurrent
    check_no_run_and_no_metric_lost(results, folder, uri)


def test_credentials_in_the_tracking_uri_stay_out_of_output_params_and_tags(concurrent):
    results, _, uri = concurrent
    for _, out, err in results:
        assert SECRET not in out and SECRET not in err
        assert "kdh:***@127.0.0.1" in out + err  # the URI is shown, redacted
    mlflow.set_tracking_uri(uri)
    for run in mlflow.search_runs(experiment_names=["kdh/default"], output_format="list"):
        assert SECRET not in json.dumps({**run.data.params, **run.data.tags})


def test_two_promotions_racing_leave_exactly_one_champion(sqlite_server, tiny_world, tmp_path):
    """Two processes promote at the same moment, ROUNDS times (half of them racing to be a model's
    first champion): each time both end cleanly, the newer version is the one champion, and each
    version's previous champion really held the alias. Against the server: there two requests run
    at once inside it and can collide in SQLite (`UNIQUE constraint failed`); a local SQLite store
    takes one writer at a time."""
    uri, _ = sqlite_server
    candidates = model_variants(tiny_world.student_dir, tmp_path, 2)
    fingerprints = [fingerprint(ModelRef("c", str(c))) for c in candidates]
    names = race_names("kdh-race", ROUNDS)
    per_round, snapshots = race_promotions(uri, candidates, names, tmp_path)
    assert check_races(per_round, snapshots, names, fingerprints) == ROUNDS  # every round, both exited 0
    mlflow.set_tracking_uri(uri)
    for name in set(names):
        history = promotion.history(name)
        assert len(history) == 4 and history["champion"].sum() == 1
        assert promotion.champion_version(name).tags["kdh.fingerprint"] in fingerprints


def test_concurrent_writers_on_the_sqlite_store_work_or_say_to_use_a_server(tiny_world, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [kdh(["eval", "--limit", "2", "--out", str(tmp_path / f"eval{i}")], uri, tmp_path) for i in range(2)]
    for code, out, err in finish(procs):
        assert code == 0 or (code == 3 and "mlflow server" in err), err[-2000:]
