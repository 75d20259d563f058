"""Promotion into the MLflow model registry: the champion alias, rollback along the chain, resolve."""

from __future__ import annotations

import shutil

import mlflow
import pytest
from safetensors.torch import load_file, save_file

from harness import home, tracking
from harness.errors import BadInput
from harness.models import ModelRef, fingerprint
from harness.promotion import (
    HISTORY_COLUMNS,
    champion_version,
    history,
    promote,
    registered_name,
    resolve,
    rollback,
)


@pytest.fixture
def name(request):
    """A registered model of its own per test; the store is shared by the session."""
    return registered_name(request.node.name.replace("[", "-").replace("]", ""))


@pytest.fixture
def experiment(kdh_env):
    tracking.connect()
    return tracking.experiment_id("promotion-tests")


@pytest.fixture
def variants(tiny_world, tmp_path):
    """``variants(n)``: n copies of the tiny student, each with different weights."""

    def make(n: int) -> list:
        folders = []
        for i in range(n):
            folder = shutil.copytree(tiny_world.student_dir, tmp_path / f"student-{i}")
            weights = next(folder.glob("*.safetensors"))
            tensors = load_file(weights)
            key = min(tensors)
            tensors[key] = tensors[key] + 0.01 * (i + 1)
            save_file(tensors, weights, metadata={"format": "pt"})
            folders.append(folder)
        assert len({fp(f) for f in folders}) == n
        return folders

    return make


def fp(folder) -> str:
    return fingerprint(ModelRef(name="m", source=str(folder)))


def promote_in_run(experiment, folder, name, **kw) -> dict:
    with mlflow.start_run(experiment_id=experiment):
        return promote(folder, name, **kw)


def test_registered_name():
    assert registered_name("demo") == "kdh-demo"


def test_promote_twice_moves_the_champion_and_keeps_history(experiment, variants, name):
    a, b = variants(2)
    first = promote_in_run(experiment, a, name, tags={"kdh.suite": "demo", "step": 7})
    second = promote_in_run(experiment, b, name)
    assert (first["version"], first["previous"]) == (1, None)
    assert (second["version"], second["previous"]) == (2, 1)
    assert first["fingerprint"] == fp(a) and second["fingerprint"] == fp(b)
    assert first["source"].endswith("/artifacts/promoted")

    champ = champion_version(name)
    assert int(champ.version) == 2
    assert champ.tags["kdh.previous_champion"] == "1"
    assert champ.tags["kdh.fingerprint"] == fp(b)
    v1 = mlflow.MlflowClient().get_model_version(name, "1")
    assert v1.tags["kdh.previous_champion"] == ""
    assert v1.tags["kdh.suite"] == "demo" and v1.tags["step"] == "7"

    table = history(name)
    assert list(table.columns) == HISTORY_COLUMNS
    assert table["version"].tolist() == [2, 1]
    assert table["champion"].tolist() == [True, False]
    assert table["previous_champion"].tolist() == ["1", ""]
    assert table["fingerprint"].tolist() == [fp(b), fp(a)]
    assert str(table["created"].dt.tz) == "UTC"
    assert all(table["promoted_at"].str.endswith("+00:00"))


def test_resolve_downloads_each_version_once(experiment, variants, name):
    a, b = variants(2)
    promote_in_run(experiment, a, name)
    promote_in_run(experiment, b, name)

    path = resolve(f"models:/{name}@champion")
    assert path == str(home.kdh_home() / "models" / name / "2")
    assert fp(path) == fp(b)
    weights = next(p for p in home.kdh_home().joinpath("models", name, "2").glob("*.safetensors"))
    before = (weights.stat().st_mtime_ns, weights.stat().st_ino)
    assert resolve(f"models:/{name}@champion") == path
    assert (weights.stat().st_mtime_ns, weights.stat().st_ino) == before  # not downloaded again

    old = resolve(f"models:/{name}/1")
    assert old == str(home.kdh_home() / "models" / name / "1") and fp(old) == fp(a)

    rollback(name)  # the alias moves; the version folders do not
    assert resolve(f"models:/{name}@champion") == old
    assert fp(path) == fp(b)

    assert resolve("./some/folder") == "./some/folder"
    assert resolve("org/hub-model") == "org/hub-model"


def test_rollback_walks_back_along_the_chain(experiment, variants, name):
    folders = variants(3)
    for folder in folders:
        promote_in_run(experiment, folder, name)
    assert int(champion_version(name).version) == 3

    assert rollback(name) == {"name": name, "version": 2, "left": 3}
    assert rollback(name) == {"name": name, "version": 1, "left": 2}
    assert int(champion_version(name).version) == 1
    with pytest.raises(BadInput, match="first champion.*promote another model"):
        rollback(name)
    assert int(champion_version(name).version) == 1

    table = history(name)
    assert table["version"].tolist() == [3, 2, 1]  # nothing deleted
    assert table["champion"].tolist() == [False, False, True]
    assert [bool(t) for t in table["rolled_back_at"]] == [True, True, False]

    # A promotion after rollbacks replaces the champion of the moment, and rolls back to it.
    promote_in_run(experiment, folders[2], name)
    assert rollback(name) == {"name": name, "version": 1, "left": 4}


def test_rollback_without_a_champion_says_so(experiment, variants, name):
    with pytest.raises(BadInput, match=f"'{name}' has no champion.*promote a model first"):
        rollback(name)
    (folder,) = variants(1)
    promote_in_run(experiment, folder, name)
    mlflow.MlflowClient().delete_registered_model_alias(name, "champion")
    assert champion_version(name) is None
    with pytest.raises(BadInput, match="no champion"):
        rollback(name)


def test_unknown_models_are_named_with_what_exists(experiment, variants, name):
    (folder,) = variants(1)
    promote_in_run(experiment, folder, name)
    with pytest.raises(BadInput, match=rf"no registered model 'kdh-nope'; registered: .*\b{name}\b"):
        resolve("models:/kdh-nope@champion")
    with pytest.raises(BadInput, match=r"no alias 'staging'; its aliases: champion \(version 1\)"):
        resolve(f"models:/{name}@staging")
    with pytest.raises(BadInput, match="no version 5; its versions: 1"):
        resolve(f"models:/{name}/5")
    with pytest.raises(BadInput, match="expected models:/NAME@ALIAS or models:/NAME/VERSION"):
        resolve(f"models:/{name}/latest")
    assert champion_version("kdh-nope") is None
    empty = history("kdh-nope")
    assert empty.empty and list(empty.columns) == HISTORY_COLUMNS
    assert not (home.kdh_home() / "models" / "kdh-nope").exists()


def test_promote_with_a_source_uri_logs_nothing_new(experiment, variants, name):
    (folder,) = variants(1)
    first = promote_in_run(experiment, folder, name)
    with mlflow.start_run(experiment_id=experiment) as run:
        second = promote(folder, name, source_uri=first["source"])
    assert mlflow.MlflowClient().list_artifacts(run.info.run_id) == []
    assert second["source"] == first["source"] and second["version"] == 2
    version = champion_version(name)
    assert version.source == first["source"] and version.run_id == run.info.run_id
    assert fp(resolve(f"models:/{name}/2")) == fp(folder)


def test_promote_needs_a_run_or_a_source(experiment, variants, name):
    (folder,) = variants(1)
    assert mlflow.active_run() is None
    with pytest.raises(BadInput, match="active MLflow run.*source_uri"):
        promote(folder, name)
    assert champion_version(name) is None and history(name).empty  # nothing half-registered


def test_promote_twice_in_one_run_is_refused(experiment, variants, name):
    a, b = variants(2)
    with mlflow.start_run(experiment_id=experiment):
        promote(a, name)
        with pytest.raises(BadInput, match="already holds a promoted model"):
            promote(b, name)
    assert fp(resolve(f"models:/{name}@champion")) == fp(a)  # v1's files were not overwritten


def test_promote_refuses_a_folder_that_is_not_a_model(experiment, tmp_path, name):
    (tmp_path / "config.json").write_text("{}")
    with mlflow.start_run(experiment_id=experiment):
        with pytest.raises(BadInput, match="no \\*.safetensors"):
            promote(tmp_path, name)
        with pytest.raises(BadInput, match="does not exist"):
            promote(tmp_path / "missing", name)
    assert champion_version(name) is None
