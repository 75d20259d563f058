"""Promotion: the MLflow model registry holds every promoted student; the alias ``champion`` marks
the one in use.

Each promotion is a new model version, never an overwrite, so history is kept and a rollback only
moves the alias. A version's tag ``kdh.previous_champion`` names the champion it replaced; that
chain is what rollback walks back along (v3 -> v2 -> v1), so repeated rollbacks never bounce
between two versions. ``resolve`` turns ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` into
a local folder that transformers can load.

MLflow must already point at the right store (``harness.tracking.connect``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from harness import home
from distiller.files import write_atomic_folder
from harness.errors import BadInput, RuntimeFailure
from harness.models import ModelRef, fingerprint

CHAMPION = "champion"
ARTIFACT_PATH = "promoted"
PREVIOUS_TAG = "kdh.previous_champion"
FINGERPRINT_TAG = "kdh.fingerprint"
PROMOTED_TAG = "kdh.promoted_at"
ROLLED_BACK_TAG = "kdh.rolled_back_at"
HISTORY_COLUMNS = ["version", "created", "champion", "promoted_at", "rolled_back_at", "previous_champion",
                   "fingerprint", "run_id", "source"]
# Written into each downloaded folder: the cache is keyed by name/version only, and the same name
# and version in another store (another MLFLOW_TRACKING_URI) are different files.
_ORIGIN_FILE = ".kdh-origin.json"


def registered_name(suite_name: str) -> str:
    return f"kdh-{suite_name}"


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _registered_model(name: str):
    """The registered model, or None if there is none by that name (other errors propagate)."""
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _version(name: str, version) -> object | None:
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_model_version(name, str(version))
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def champion_version(name: str):
    """The ModelVersion the alias ``champion`` points at; None if the model or alias is missing.

    Read from the registered model's alias map: a missing alias makes
    ``get_model_version_by_alias`` raise INVALID_PARAMETER_VALUE, too broad a code to catch."""
    model = _registered_model(name)
    if model is None or CHAMPION not in (model.aliases or {}):
        return None
    return _version(name, model.aliases[CHAMPION])


def _ensure_registered(name: str) -> None:
    from mlflow.exceptions import MlflowException

    if _registered_model(name) is not None:
        return
    try:
        _client().create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":  # another process created it first
            raise


def _log_folder(model_dir: Path) -> str:
    """Copy the folder into the active run; the artifact URI of the copy."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise BadInput("promote needs an active MLflow run to log the model into (mlflow.start_run), "
                       "or source_uri= naming files already logged, e.g. an earlier run's .../artifacts/student")
    # A second log into the same path would overwrite the files an earlier version points at.
    if _client().list_artifacts(run.info.run_id, ARTIFACT_PATH):
        raise BadInput(f"run {run.info.run_id} already holds a promoted model under '{ARTIFACT_PATH}'; "
                       "promote each model from its own run")
    mlflow.log_artifacts(str(model_dir), artifact_path=ARTIFACT_PATH)
    return f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT_PATH}"


def promote(model_dir, name: str, *, source_uri: str | None = None, tags: dict | None = None) -> dict:
    """Register ``model_dir`` as a new version of ``name`` and move ``champion`` to it.

    With ``source_uri`` the files are not logged again; the version points there (the caller
    vouches that it holds the same bytes as ``model_dir``, which the fingerprint is taken from)."""
    import mlflow

    model_dir = Path(model_dir).expanduser().resolve()
    digest = fingerprint(ModelRef(name=name, source=str(model_dir)))  # also checks it is a model folder
    if not any(model_dir.glob("*.safetensors")):
        raise BadInput(f"{model_dir} has no *.safetensors weights; kdh loads safetensors only, "
                       "so it cannot be promoted")
    source = source_uri if source_uri is not None else _log_folder(model_dir)
    _ensure_registered(name)
    before = champion_version(name)
    previous = int(before.version) if before is not None else None
    all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    all_tags.update({FINGERPRINT_TAG: digest, PREVIOUS_TAG: "" if previous is None else str(previous),
                     PROMOTED_TAG: _now()})
    run = mlflow.active_run()
    version = _client().create_model_version(name, source=source, run_id=run.info.run_id if run else None,
                                             tags=all_tags)
    _client().set_registered_model_alias(name, CHAMPION, str(version.version))
    return {"name": name, "version": int(version.version), "previous": previous, "source": source,
            "fingerprint": digest}


def rollback(name: str) -> dict:
    """Move ``champion`` back to the version the current one replaced; versions are kept."""
    current = champion_version(name)
    if current is None:
        raise BadInput(f"'{name}' has no champion to roll back from; promote a model first")
    previous = current.tags.get(PREVIOUS_TAG, "")
    if not previous:
        raise BadInput(f"'{name}' version {current.version} was the first champion, so there is no earlier "
                       "one to roll back to; promote another model instead")
    if _version(name, previous) is None:
        raise BadInput(f"'{name}' version {current.version} replaced version {previous}, which no longer "
                       f"exists in the registry; promote the model you want instead")
    # Move the alias before tagging: a failure in between leaves a correct champion, only a missing note.
    _client().set_registered_model_alias(name, CHAMPION, previous)
    _client().set_model_version_tag(name, str(current.version), ROLLED_BACK_TAG, _now())
    return {"name": name, "version": int(previous), "left": int(current.version)}


def history(name: str):
    """One row per version, newest first."""
    import pandas as pd

    model = _registered_model(name)
    if model is None:
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    # search_model_versions leaves ModelVersion.aliases empty (3.17, SQL store): ask the model.
    champion = (model.aliases or {}).get(CHAMPION)
    versions = _client().search_model_versions(f"name = '{name}'")
    rows = [{"version": int(v.version),
             "created": pd.to_datetime(v.creation_timestamp, unit="ms", utc=True),
             "champion": champion is not None and int(v.version) == int(champion),
             "promoted_at": v.tags.get(PROMOTED_TAG, ""), "rolled_back_at": v.tags.get(ROLLED_BACK_TAG, ""),
             "previous_champion": v.tags.get(PREVIOUS_TAG, ""), "fingerprint": v.tags.get(FINGERPRINT_TAG, ""),
             "run_id": v.run_id or "", "source": v.source} for v in versions]
    frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    return frame.sort_values("version", ascending=False, ignore_index=True)


def _parse(source: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) from ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    rest = source[len("models:/"):]
    if "@" in rest:
        name, _, alias = rest.rpartition("@")
        if name and alias:
            return name, alias, None
    else:
        name, _, version = rest.rpartition("/")
        if name and version.isdigit():
            return name, None, version
    raise BadInput(f"'{source}': expected models:/NAME@ALIAS or models:/NAME/VERSION, e.g. models:/kdh-demo@champion")


def _lookup(source: str):
    """The ModelVersion a ``models:/`` URI names, or BadInput listing what exists."""
    name, alias, version = _parse(source)
    model = _registered_model(name)
    if model is None:
        known = sorted(m.name for m in _client().search_registered_models(max_results=1000))
        raise BadInput(f"'{source}': no registered model '{name}'; registered: {', '.join(known) or 'none'}")
    aliases = model.aliases or {}
    if alias is not None:
        if alias not in aliases:
            listed = ", ".join(f"{a} (version {v})" for a, v in sorted(aliases.items())) or "none"
            raise BadInput(f"'{source}': '{name}' has no alias '{alias}'; its aliases: {listed}")
        version = str(aliases[alias])
    found = _version(name, version)
    if found is None:
        known = sorted(int(v.version) for v in _client().search_model_versions(f"name = '{name}'"))
        raise BadInput(f"'{source}': '{name}' has no version {version}; "
                       f"its versions: {', '.join(map(str, known)) or 'none'}")
    return found


def resolve(source: str) -> str:
    """A local folder for a ``models:/`` URI (downloaded once per version); other sources unchanged.

    An alias is resolved to its version first: the alias moves, a version's files never change,
    so the cache folder is per version."""
    if not source.startswith("models:/"):
        return source
    import mlflow

    found = _lookup(source)
    origin = {"tracking_uri": mlflow.get_tracking_uri(), "source": found.source}
    folder = home.kdh_home() / "models" / found.name / str(found.version)
    try:
        if json.loads((folder / _ORIGIN_FILE).read_text()) == origin:
            return str(folder)
    except (OSError, ValueError):
        pass  # not downloaded yet, or cut short before the origin was written

    expected = found.tags.get(FINGERPRINT_TAG)

    def fill(tmp: Path) -> None:
        # With dst_path MLflow copies the files; without it, a local store returns its own folder.
        mlflow.artifacts.download_artifacts(f"models:/{found.name}/{found.version}", dst_path=str(tmp))
        got = fingerprint(ModelRef(name=source, source=str(tmp)))
        if expected and got != expected:
            raise RuntimeFailure(f"'{source}': the files at {found.source} do not match the fingerprint recorded "
                                 f"at promotion ({got[:12]} != {expected[:12]}); they changed since")
        (tmp / _ORIGIN_FILE).write_text(json.dumps(origin) + "\n")

    return str(write_atomic_folder(folder, fill))
