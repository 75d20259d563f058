"""Promotion into the MLflow model registry: the champion alias, rollback along the chain, resolve."""

from __future__ import annotations

import mlflow
import pytest
from servers import model_variants

from harness import home, tracking
from harness.errors import BadInput, RuntimeFailure
from harness.models import ModelRef, fingerprint
from harness.model_uris import resolve
from harness.promotion import HISTORY_COLUMNS, champion_version, history, promote, registered_name, rollback


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
        folders = model_variants(tiny_world.student_dir, tmp_path, n)
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
    # The version's run is the one that holds its files (a server refuses any other), not the active run.
    assert version.source == first["source"] and version.run_id == first["run_id"] != run.info.run_id
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


def test_the_version_names_the_run_that_holds_its_files(experiment, variants, name):
    (folder,) = variants(1)
    with mlflow.start_run(experiment_id=experiment) as distill:  # e.g. the loop's distillation run
        mlflow.log_artifacts(str(folder), artifact_path="student")
    source = f"{distill.info.artifact_uri}/student"
    with mlflow.start_run(experiment_id=experiment) as other:  # e.g. the loop's own run
        with pytest.raises(BadInput, match=f"not among the artifacts of run {other.info.run_id}"):
            promote(folder, name, source_uri=source, source_run_id=other.info.run_id)
        with pytest.raises(BadInput, match="no such run"):
            promote(folder, name, source_uri=source, source_run_id="0" * 32)
        with pytest.raises(BadInput, match="give source_uri too"):
            promote(folder, name, source_run_id=distill.info.run_id)
        assert champion_version(name) is None  # nothing registered by a refused promotion
        promoted = promote(folder, name, source_uri=source, source_run_id=distill.info.run_id)
    assert promoted["run_id"] == distill.info.run_id and promoted["champion"] == promoted["version"] == 1
    assert champion_version(name).run_id == distill.info.run_id
    with pytest.raises(BadInput, match="cannot tell which run holds it.*source_run_id"):
        promote(folder, name, source_uri=str(folder))  # a folder no run logged


def test_promotion_works_on_the_file_store(variants, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps it behind a switch
    a, b = variants(2)
    saved = mlflow.get_tracking_uri()
    # set_tracking_uri also sets MLFLOW_TRACKING_URI, which kdh reads first: monkeypatch puts it back.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    try:
        with mlflow.start_run() as distill:
            mlflow.log_artifacts(str(b), artifact_path="student")
        promote_in_run(mlflow.get_experiment_by_name("Default").experiment_id, a, "kdh-file")
        with mlflow.start_run():
            second = promote(b, "kdh-file", source_uri=f"{distill.info.artifact_uri}/student",
                             source_run_id=distill.info.run_id)
        assert (second["version"], second["previous"], second["run_id"]) == (2, 1, distill.info.run_id)
        assert fp(resolve("models:/kdh-file@champion")) == fp(b)
        assert rollback("kdh-file") == {"name": "kdh-file", "version": 1, "left": 2}
    finally:
        tracking.connect(saved)


def test_a_write_conflict_is_retried_then_reported_in_kdh_words(experiment, variants, name, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from harness import registry_calls

    monkeypatch.setattr(registry_calls, "BACKOFF_S", 0.001)
    real = MlflowClient.set_registered_model_alias
    calls = []
    conflict = MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: registered_model_aliases.name",
                               error_code="BAD_REQUEST")

    def flaky(self, *args):  # what two processes inserting the alias at once get from MLflow
        calls.append(args)
        if len(calls) <= failures:
            raise conflict
        return real(self, *args)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", flaky)
    a, b = variants(2)
    failures = 2
    assert promote_in_run(experiment, a, name)["champion"] == 1 and len(calls) == 3
    calls.clear()
    failures = 10**6
    with pytest.raises(RuntimeFailure) as caught:
        promote_in_run(experiment, b, name)
    assert len(calls) == registry_calls.ATTEMPTS
    message = str(caught.value)
    assert "kept refusing it after" in message and "kdh promote --list" in message
    assert not any(raw in message for raw in ("IntegrityError", "sqlite3", "UNIQUE"))
    assert int(champion_version(name).version) == 1  # the champion is still a whole one


def test_a_newer_concurrent_promotion_takes_the_champion(experiment, variants, name, monkeypatch):
    """Another process registers a newer version between this one's registration and its move of
    the alias: the newer version becomes champion (as if the two had run one after the other), and
    both name the champion they really replaced."""
    from mlflow import MlflowClient

    a, b, c = variants(3)
    promote_in_run(experiment, a, name)  # v1, the champion both race to replace
    with mlflow.start_run(experiment_id=experiment):
        mlflow.log_artifacts(str(c), artifact_path="other")
        other = f"{mlflow.active_run().info.artifact_uri}/other"
        real = MlflowClient.create_model_version

        def and_another(self, model, **kw):
            mine = real(self, model, **kw)
            if kw["source"] != other:
                real(self, model, source=other, run_id=kw["run_id"], tags={**kw["tags"], "kdh.fingerprint": fp(c)})
            return mine

        monkeypatch.setattr(MlflowClient, "create_model_version", and_another)
        promoted = promote(b, name)
    assert (promoted["version"], promoted["previous"], promoted["champion"]) == (2, 1, 3)
    table = history(name).set_index("version")
    assert table.loc[3, "champion"] and table["champion"].sum() == 1
    assert table.loc[2, "previous_champion"] == "1" and table.loc[3, "previous_champion"] == "1"
    assert rollback(name) == {"name": name, "version": 1, "left": 3}
