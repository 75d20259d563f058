"""Several kdh processes at once against one real `mlflow server` on loopback, and against the
default SQLite store. What a user relies on: no run and no metric is lost, two promotions racing
leave exactly one champion, and credentials in the tracking URI never reach logs or params."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from harness import promotion
from harness.scorecard import Scorecard

SECRET = "s3cr3t-pw"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real `mlflow server` (SQLite behind it, 2 workers) on a free loopback port."""
    folder = tmp_path_factory.mktemp("server")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--default-artifact-root", (folder / "art").as_uri()],
        stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "w"), env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
    yield f"http://kdh:{SECRET}@127.0.0.1:{port}", port
    proc.terminate()
    proc.wait(timeout=30)


def kdh(args: list[str], uri: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs):
    return [(p.wait(timeout=600), *p.communicate()) for p in procs]


@pytest.fixture(scope="module")
def concurrent(server, tiny_world, tmp_path_factory):
    """Two `kdh eval` and a `kdh distill` process started together against the server."""
    uri, _ = server
    folder = tmp_path_factory.mktemp("concurrent")
    procs = [kdh(["eval", "--limit", "3", "--no-cache", "--out", str(folder / f"eval{i}")], uri, folder) for i in range(2)]
    procs += [kdh(["distill", "--steps", "6", "--interval", "3", "--save-every", "6", "--out", str(folder / "distill")],
                  uri, folder)]
    return finish(procs), folder, uri


def test_concurrent_runs_lose_no_run_and_no_metric(concurrent):
    results, folder, uri = concurrent
    for code, out, err in results:
        assert code == 0, err[-3000:]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["kdh/default"], output_format="list")
    assert all(r.info.status == "FINISHED" for r in runs)
    parents = [r for r in runs if r.data.tags.get("kdh.kind") == "eval" and "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2
    client = MlflowClient()
    for i, (_, out, _) in enumerate(results[:2]):  # every value of every saved scorecard is in its model's nested run
        card = Scorecard.load(folder / f"eval{i}")
        run_id = re.search(r"run ([0-9a-f]{32})", out).group(1)
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run_id]
        assert sorted(c.data.tags["kdh.model"] for c in children) == ["student", "teacher"]
        for child in children:
            logged = child.data.metrics
            mine = card.rows[card.rows["model"] == child.data.tags["kdh.model"]]
            assert all(logged[f"{r.domain}/{r.slice}/{r.metric}"] == pytest.approx(r.value) for r in mine.itertuples())
    distills = [r for r in runs if r.data.tags.get("kdh.kind") == "distill"]
    assert len(distills) == 1
    for run in distills:  # one weight per domain at each of the 2 mixture updates (steps 0 and 3) and the end
        history = client.get_metric_history(run.info.run_id, "ddk/weight/records")
        table = json.loads(Path(client.download_artifacts(run.info.run_id, "tables/ddk_history.json")).read_text())
        assert len(history) == len(table["data"]) >= 2
        assert len(client.get_metric_history(run.info.run_id, "loss")) >= 1


def test_credentials_in_the_tracking_uri_stay_out_of_output_params_and_tags(concurrent):
    results, _, uri = concurrent
    for _, out, err in results:
        assert SECRET not in out and SECRET not in err
        assert "kdh:***@127.0.0.1" in out + err  # the URI is shown, redacted
    mlflow.set_tracking_uri(uri)
    for run in mlflow.search_runs(experiment_names=["kdh/default"], output_format="list"):
        assert SECRET not in json.dumps({**run.data.params, **run.data.tags})


def test_two_promotions_racing_leave_exactly_one_champion(concurrent, tiny_world):
    results, folder, uri = concurrent
    candidates = [folder / "distill" / "student", tiny_world.student_dir]
    racers = [kdh(["promote", "--force", "--candidate", str(c)], uri, folder) for c in candidates]
    for code, out, err in finish(racers):
        assert code == 0, err[-2000:]
    mlflow.set_tracking_uri(uri)
    history = promotion.history("kdh-default")
    assert len(history) == 2 and history["champion"].sum() == 1
    champion = promotion.champion_version("kdh-default")
    assert champion.tags["kdh.fingerprint"] in set(history["fingerprint"])


def test_concurrent_writers_on_the_sqlite_store_work_or_say_to_use_a_server(tiny_world, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [kdh(["eval", "--limit", "2", "--out", str(tmp_path / f"eval{i}")], uri, tmp_path) for i in range(2)]
    for code, out, err in finish(procs):
        assert code == 0 or (code == 3 and "mlflow server" in err), err[-2000:]
