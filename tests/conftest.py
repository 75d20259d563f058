"""Shared fixtures: an isolated kdh home per session, the tiny demo world, suite-file helpers."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest

from harness import home

pytest_plugins = ["pytester", "servers"]  # pytester: the kdh plugin in an inner session (test_gate_cli.py); servers: tests/servers.py

REPO = Path(__file__).resolve().parent.parent

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under `pytest -n 2` (.ci/run) two workers share the cores: one thread each, in this process and
    # in every kdh process a test starts, rather than four threads on two cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
TEMPLATES = REPO / "suites" / "tasks"

# The files that take longest (each 1-2.5 minutes in .ci/run), run first. Two workers each take a
# whole file at a time (--dist loadfile), in collection order; a long file taken last would leave the
# other worker idle at the end, so the long ones go first and the short ones fill in after.
LONGEST_FIRST = ("test_sharded.py", "test_reliability.py", "test_team_server.py", "test_families.py",
                 "test_concurrency.py", "test_loop.py", "test_console.py", "test_dashboard_browser.py",
                 "test_gate_cli.py", "test_onpolicy.py", "test_teacher_signal.py", "test_agreement.py",
                 "test_sweep.py", "test_generation.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: a file keeps its order


@pytest.fixture(scope="session", autouse=True)
def kdh_env(tmp_path_factory):
    """Every test runs against its own kdh home, the tiny demo world and a local store.
    ``KDH_TEST_HOME`` keeps that home between runs (the tiny world then builds once), for development."""
    root = Path(os.environ["KDH_TEST_HOME"]) if os.environ.get("KDH_TEST_HOME") else tmp_path_factory.mktemp("kdh-home")
    if os.environ.get("PYTEST_XDIST_WORKER") and not (root / "demo").exists():
        # The workers of one run share one demo world (its build is locked: one builds, the others wait
        # and find it) instead of each building its own on the same two cores.
        shared = tmp_path_factory.getbasetemp().parent / "kdh-demo"
        shared.mkdir(exist_ok=True)
        (root / "demo").symlink_to(shared, target_is_directory=True)
    saved = {k: os.environ.get(k) for k in ("KDH_HOME", "KDH_DEMO_SIZE", "MLFLOW_TRACKING_URI")}
    os.environ.update(KDH_HOME=str(root), KDH_DEMO_SIZE="tiny")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    home.configure_environment()
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def keep_main_module():
    """Streamlit's AppTest runs the dashboard as ``__main__`` and leaves it there; every process
    spawned afterwards (the tokenizing pool of `prepare`) would then re-run the whole app on start
    (an MLflow store, seconds a worker). Each test gets back the ``__main__`` it started with."""
    import sys

    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main


@pytest.fixture(scope="session")
def tiny_world(kdh_env):
    from harness.demo import ensure_world

    return ensure_world(home.kdh_home(), size="tiny", progress=False)


DOMAIN_NAMES = ("code", "prose", "arithmetic", "records")


@pytest.fixture(scope="session")
def tiny_store(tiny_world):
    """``tiny_store(tokenizer_folder)``: the tiny world's token store in that tokenizer (made once,
    under the kdh home, as `kdh distill` would find it)."""
    from transformers import AutoTokenizer

    from distiller.prepare import prepare

    def store_of(tokenizer_dir: Path) -> Path:
        corpora = {d: {"train": [tiny_world.domain_file(d, "train.jsonl")],
                       "validation": [tiny_world.domain_file(d, "validation.jsonl")]} for d in DOMAIN_NAMES}
        return prepare(corpora, AutoTokenizer.from_pretrained(tokenizer_dir), root=home.kdh_home() / "stores").root

    return store_of


@pytest.fixture(scope="session")
def lenient_suite(tmp_path_factory):
    """The default suite with a retention floor the tiny student meets: what is left to fail on is
    a regression against the champion."""
    folder = tmp_path_factory.mktemp("suite")
    shutil.copytree(home.repo_suites_dir() / "tasks", folder / "tasks")
    text = (home.repo_suites_dir() / "default.yaml").read_text().replace("min_retention: 0.6", "min_retention: 0.1")
    (folder / "default.yaml").write_text(text)
    return folder / "default.yaml"


@pytest.fixture
def write_suite(tmp_path):
    """Write a suite YAML (and the data files it needs) into a fresh folder; return its path."""

    def write(body: str, name: str = "suite.yaml", data: dict[str, str] | None = None) -> Path:
        for rel, content in (data or {}).items():
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        shutil.copytree(TEMPLATES, tmp_path / "tasks", dirs_exist_ok=True)
        path = tmp_path / name
        path.write_text(textwrap.dedent(body))
        return path

    return write


PPL_ROWS = '{"text": "def f(x):\\n    return x + 1\\n"}\n{"text": "import os\\nprint(os.getcwd())\\n"}\n'
MC_ROWS = '{"context": "1 + 1 =", "choices": [" 2", " 3"], "label": 0}\n{"context": "2 + 2 =", "choices": [" 5", " 4"], "label": 1}\n'
