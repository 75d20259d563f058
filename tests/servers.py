"""Real servers for the tests, loaded as a pytest plugin (tests/conftest.py): a PostgreSQL cluster
in a temporary folder and a real ``mlflow server`` on it that proxies artifacts, the team setup of
docs/deployment.md. Both start once per session, on free loopback ports, and stop at its end.

PostgreSQL comes from the Debian ``postgresql`` package's binaries (``/usr/lib/postgresql/N/bin``;
``.ci/run`` installs it when missing). ``initdb`` and ``pg_ctl`` refuse to run as root, so under
root the cluster runs as the package's ``postgres`` user, in a folder that user owns. Where no
PostgreSQL is installed the fixtures skip, saying why.

Also the helpers the server tests share: ``start_mlflow_server`` (waits on ``/health``; the log's
tail on failure), ``kdh_in_process`` (``harness.cli.main`` with its output captured), the concurrent
writers (``kdh`` processes: tests/processes.py) and their check, and the racing promotions and theirs.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import processes
import pytest

SECRET = "s3cr3t-pw"  # the password in the tracking URI; the tests check that it never shows
PG_USER, PG_PASSWORD, PG_DATABASE = "kdh", "kdh-pg-pw", "mlflow"
START_TIMEOUT = 300  # seconds: generous, so a loaded machine is slow, not failing
TIMINGS: dict[str, float] = {}  # how long each server took to start (reported at the session's end)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as err:
        return f"(no log: {err})"


# --------------------------------------------------------------------------------------------
# MLflow server


@contextmanager
def start_mlflow_server(backend_uri: str, folder: Path, *args: str, workers: int = 2):
    """``mlflow server`` on a free loopback port with ``backend_uri`` behind it; yields
    ``(port, log path)`` once ``/health`` answers, and stops it on exit. ``args`` say where
    artifacts go (``--default-artifact-root`` or ``--serve-artifacts --artifacts-destination``)."""
    folder.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), folder / "server.log"
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(workers), "--backend-store-uri", backend_uri, *args],
            stdout=out, stderr=subprocess.STDOUT,
            # Without job execution: MLflow 3 otherwise starts a job runner and seven huey consumers
            # (for its GenAI jobs, which kdh never uses), 20 CPU-seconds of imports at each start.
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode} before answering:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not answer in {START_TIMEOUT} s:\n{_tail(log)}")
                time.sleep(0.3)
        TIMINGS[f"mlflow server ({backend_uri.split(':', 1)[0]})"] = time.perf_counter() - started
        yield port, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------------------
# PostgreSQL


@dataclass(frozen=True)
class Postgres:
    port: int
    bin: Path

    def uri(self, database: str = PG_DATABASE) -> str:
        return f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.port}/{database}"


def postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` holding initdb (Debian keeps them off PATH), else
    the folder of an ``initdb`` on PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.parent.name)] or [0])
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


def _as_owner() -> dict:
    """subprocess arguments that run PostgreSQL's tools as a non-root user when this is root."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


@contextmanager
def start_postgres():
    """A PostgreSQL cluster in a temporary folder on a free loopback port, with password
    authentication and an empty database ``PG_DATABASE``; yields a ``Postgres``."""
    binaries = postgres_bin()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH): "
                    "`apt-get install postgresql`, as .ci/run does")
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as "
                        "(initdb refuses root; Debian's postgresql package creates that user)")
    started = time.perf_counter()
    # Not under pytest's tmp_path: that is private to root, and the cluster runs as 'postgres'.
    folder = Path(tempfile.mkdtemp(prefix="kdh-pg-"))
    data, log, pwfile = folder / "data", folder / "postgres.log", folder / "pwfile"
    pwfile.write_text(PG_PASSWORD + "\n")
    if os.geteuid() == 0:
        for path in (folder, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    env = {**os.environ, "PGPASSWORD": PG_PASSWORD, "LC_ALL": "C"}
    port = free_port()

    def run(*argv: str) -> None:
        done = subprocess.run([str(binaries / argv[0]), *argv[1:]], cwd=folder, env=env, capture_output=True, check=False,
                              text=True, timeout=START_TIMEOUT, **_as_owner())
        if done.returncode != 0:
            pytest.fail(f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
                        f"\n{_tail(log)}")

    try:
        run("initdb", "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}", "--auth-host=scram-sha-256",
            "--auth-local=trust", "--no-sync", "-E", "UTF8")
        # fsync off: a test cluster need not survive a power cut, and a loaded disk makes it slow.
        run("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", str(START_TIMEOUT), "start", "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -F -c max_connections=200")
        try:
            run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, PG_DATABASE)
            TIMINGS["postgresql"] = time.perf_counter() - started
            yield Postgres(port=port, bin=binaries)
        finally:
            subprocess.run([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], cwd=folder,
                           env=env, capture_output=True, check=False, timeout=120, **_as_owner())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the session (skips, saying why, where none is installed)."""
    with start_postgres() as server:
        yield server


@dataclass(frozen=True)
class TeamServer:
    uri: str  # http://kdh:SECRET@127.0.0.1:PORT, as a team member's MLFLOW_TRACKING_URI
    port: int
    artifacts: Path  # --artifacts-destination: where the server keeps every run's files
    log: Path


@pytest.fixture(scope="session")
def team_server(postgres, tmp_path_factory):
    """The team setup: ``mlflow server`` on PostgreSQL, proxying artifacts (``mlflow-artifacts:/``
    URIs, files under ``artifacts``); the tracking URI carries credentials, as a team's does."""
    folder = tmp_path_factory.mktemp("team-server")
    artifacts = folder / "artifacts"
    with start_mlflow_server(postgres.uri(), folder, "--serve-artifacts", "--artifacts-destination", str(artifacts)) as (port, log):
        yield TeamServer(f"http://kdh:{SECRET}@127.0.0.1:{port}", port, artifacts, log)


@pytest.fixture(scope="module")
def own_tracking_uri():
    """MLflow's tracking URI put back, at the module's end, as it was at its start. MLflow 3's
    ``set_tracking_uri`` also sets the MLFLOW_TRACKING_URI environment variable, which kdh reads
    first: left behind, it would point later modules at a server that has stopped."""
    import mlflow

    from harness import home

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(saved or home.tracking_uri())
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_line("server start-up: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items()))


def suite_copy(folder: Path, name: str, min_retention: float | None = None) -> Path:
    """The default suite under another name (its own experiment ``kdh/NAME`` and registered model
    ``kdh-NAME``), so tests sharing one server do not count each other's runs."""
    from harness import home

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(home.repo_suites_dir() / "tasks", folder / "tasks", dirs_exist_ok=True)
    text = (home.repo_suites_dir() / "default.yaml").read_text().replace("name: default", f"name: {name}", 1)
    if min_retention is not None:
        text = text.replace("min_retention: 0.6", f"min_retention: {min_retention}")
    (folder / f"{name}.yaml").write_text(text)
    return folder / f"{name}.yaml"


# --------------------------------------------------------------------------------------------
# Concurrent writers


def start_writers(uri: str, folder: Path, evals: int, suite: Path | None = None) -> list[processes.KdhProcess]:
    """``evals`` × ``kdh eval`` and one ``kdh distill``, small, started together against ``uri``."""
    chosen = ["--suite", str(suite)] if suite else []
    procs = [processes.kdh(["eval", *chosen, "--limit", "3", "--no-cache", "--out", str(folder / f"eval{i}")], uri, folder)
             for i in range(evals)]
    procs.append(processes.kdh(["distill", *chosen, "--steps", "6", "--interval", "3", "--save-every", "6",
                      "--out", str(folder / "distill")], uri, folder))
    return procs


def check_no_run_and_no_metric_lost(results, folder: Path, uri: str, experiment: str = "kdh/default") -> None:
    """What ``start_writers`` started all ended well, and the store holds every run and every value:
    each eval's scorecard row is its model's nested run's metric; the distillation's DDK history is
    whole (one weight per domain at each mixture update), as the table artifact says."""
    import json

    import mlflow
    from mlflow import MlflowClient

    from harness.scorecard import Scorecard

    *evals, _ = results
    for code, _out, err in results:
        assert code == 0, err[-3000:]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert all(r.info.status == "FINISHED" for r in runs)
    parents = [r for r in runs if r.data.tags.get("kdh.kind") == "eval" and "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == len(evals)
    client = MlflowClient()
    for i, (_, out, _) in enumerate(evals):  # every value of every saved scorecard is in its model's nested run
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


# --------------------------------------------------------------------------------------------
# Racing promotions: two long-lived processes, each promoting once per round, rounds in step


RAW = re.compile(r"Traceback|\b\w+(Error|Exception)\b|UNIQUE constraint|duplicate key|sqlalchemy|psycopg")


def model_variants(source: Path, folder: Path, n: int) -> list[Path]:
    """n copies of the model folder ``source``, each with slightly different weights."""
    from safetensors.torch import load_file, save_file

    folders = []
    for i in range(n):
        copy = shutil.copytree(source, folder / f"variant-{i}", dirs_exist_ok=True)
        weights = next(copy.glob("*.safetensors"))
        tensors = load_file(weights)
        key = min(tensors)
        tensors[key] = tensors[key] + 0.01 * (i + 1)
        save_file(tensors, weights, metadata={"format": "pt"})
        folders.append(copy)
    return folders


def kdh_in_process(argv: list[str]) -> tuple[int | str, str, str]:
    """``harness.cli.main(argv)`` in this process, its file descriptors 1 and 2 captured: what a
    user would see of it, from kdh and from every library under it."""
    import traceback

    from harness.cli import main

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        sys.stdout.flush(), sys.stderr.flush()
        saved, streams = (os.dup(1), os.dup(2)), (sys.stdout, sys.stderr)
        os.dup2(out.fileno(), 1), os.dup2(err.fileno(), 2)
        # Python's own streams onto those descriptors too (under pytest they are its capture objects).
        sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)  # noqa: SIM115
        try:
            code = main(argv)
        except BaseException:  # noqa: BLE001  a crash is a result to report, not a reason to hang the other racer
            code = "crash"
            traceback.print_exc()
        finally:
            sys.stdout.close(), sys.stderr.close()  # flushes
            sys.stdout, sys.stderr = streams
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
        out.seek(0), err.seek(0)
        return code, out.read(), err.read()


def _snapshot(name: str) -> dict:
    """The registry's view of ``name``: the champion, and each version's previous champion and fingerprint."""
    from mlflow import MlflowClient

    client = MlflowClient()
    aliases = client.get_registered_model(name).aliases
    versions = client.search_model_versions(f"name = '{name}'")
    return {"champion": int(aliases["champion"]) if "champion" in aliases else None,
            "versions": {int(v.version): {"previous": v.tags.get("kdh.previous_champion", ""),
                                          "fingerprint": v.tags.get("kdh.fingerprint", "")} for v in versions}}


def _racer(index: int, barrier, uri: str, candidate: str, names: list[str], report: str) -> None:
    """One racing process: for each round's registered model name, wait for the other racer,
    run ``kdh promote --force`` in-process, wait; racer 0 then reads the registry before the next
    round starts. Writes its report as JSON."""
    import json

    os.environ["MLFLOW_TRACKING_URI"] = uri
    results, snapshots = [], []
    for name in names:
        barrier.wait()
        results.append(kdh_in_process(["promote", "--force", "--candidate", candidate, "--name", name]))
        barrier.wait()
        if index == 0:
            try:
                snapshots.append(_snapshot(name))
            except Exception as err:  # noqa: BLE001
                snapshots.append({"error": repr(err)})
        barrier.wait()
    Path(report).write_text(json.dumps({"results": results, "snapshots": snapshots}))


def race_names(base: str, rounds: int) -> list[str]:
    """Each round's registered model: a new one every other round, so half the rounds race to be
    the first champion (both create the model and the alias) and half replace a champion."""
    return [f"{base}-{r // 2 + 1}" for r in range(rounds)]


def race_promotions(uri: str, candidates: list[Path], names: list[str], folder: Path) -> tuple[list, list]:
    """Two processes promote their candidate (``kdh promote --force --name NAME``) at the same moment,
    once per name in ``names``. Returns (per round: [(code, stdout, stderr) of racer 0, of racer 1];
    per round: the registry after it)."""
    import json

    context = processes.context()  # a process each, as two `kdh` commands (forked warm: tests/processes.py)
    barrier = context.Barrier(len(candidates))
    reports = [folder / f"racer-{i}.json" for i in range(len(candidates))]
    procs = [context.Process(target=_racer, args=(i, barrier, uri, str(c), names, str(reports[i])))
             for i, c in enumerate(candidates)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    assert all(p.exitcode == 0 and r.is_file() for p, r in zip(procs, reports)), \
        f"a racer died: exit codes {[p.exitcode for p in procs]}"
    loaded = [json.loads(r.read_text()) for r in reports]
    per_round = [list(pair) for pair in zip(*(r["results"] for r in loaded))]
    return per_round, loaded[0]["snapshots"]


def check_races(per_round: list, snapshots: list, names: list[str], fingerprints: list[str]) -> int:
    """After each round: both racers ended cleanly (exit 0, or exit 3 with a kdh message, never raw
    exception text), there is exactly one champion, the newer of the round's two versions, and each
    version's previous champion is one that really held the alias: the round's other version
    (champion between the two moves) or the previous round's champion. Returns how many rounds
    both racers exited 0."""
    assert len(per_round) == len(snapshots) > 0
    champions, seen, clean = {}, {}, 0  # per registered model: its champion, the versions seen
    for number, (results, snap, name) in enumerate(zip(per_round, snapshots, names), 1):
        where = f"round {number} ({name})"
        for code, _out, err in results:
            assert code == 0 or (code == 3 and "kdh: error:" in err), f"{where}: exit {code}: {err[-2000:]}"
            assert not RAW.search(err), f"{where}: raw exception text on stderr: {err[-2000:]}"
        assert "error" not in snap, f"{where}: {snap}"
        versions = {int(k): v for k, v in snap["versions"].items()}
        new = sorted(set(versions) - seen.get(name, set()))
        seen[name] = set(versions)
        assert snap["champion"] in versions, f"{where}: champion {snap['champion']}, versions {sorted(versions)}"
        for version, tags in versions.items():  # the chain only goes back, through versions that exist
            assert tags["previous"] == "" or int(tags["previous"]) in versions and int(tags["previous"]) < version
        if any(code != 0 for code, _, _ in results):
            champions[name] = snap["champion"]
            continue  # a clear kdh message, exit 3: its version may or may not exist; nothing more to hold it to
        clean += 1
        assert len(new) == 2 and {versions[v]["fingerprint"] for v in new} == set(fingerprints), f"{where}: {new}"
        older, newer = new
        before = str(champions.get(name, ""))
        assert snap["champion"] == newer, f"{where}: champion {snap['champion']}, versions {new}"
        assert versions[older]["previous"] == before, f"{where}: {versions}"
        assert versions[newer]["previous"] in (str(older), before), f"{where}: {versions}"
        champions[name] = newer
    return clean
