"""Promotion: the MLflow model registry holds every promoted student; the alias ``champion`` marks
the one in use.

Each promotion is a new model version, never an overwrite, so history is kept and a rollback only
moves the alias. A version's tag ``kdh.previous_champion`` names the champion it replaced; that
chain is what rollback walks back along (v3 -> v2 -> v1), so repeated rollbacks never bounce
between two versions. (``models:/NAME@ALIAS`` → a local folder: harness/model_uris.py.)

MLflow must already point at the right store (``harness.tracking.connect``).

A version's source and run_id agree on every store: ``source_run_id`` names the run holding
``source_uri`` (a tracking server refuses a version whose source lies outside its run; SQLite and
file stores do not check, so kdh checks it the same way everywhere, before anything is written).

Racing promotions (several CI jobs, several people). MLflow has no compare-and-set on an alias:
``set_registered_model_alias`` is an insert-or-update that two writers can collide on (SQLite:
``UNIQUE constraint failed``, PostgreSQL: ``duplicate key``), and between reading the champion,
creating the version and moving the alias another process can move the alias. So:

- The one order all processes agree on is the version number (the store hands them out under a
  unique constraint). The rule is: of promotions that overlap, the newest version wins. A promoter
  moves the alias to the newest version of the model (its own, or a newer one made meanwhile by a
  concurrent promotion), then reads the alias again, and repeats until it reads that version
  (bounded: ``ATTEMPTS`` tries, backing off with jitter). An older racer that finds it has just
  overwritten a newer version hands the alias back; so whatever the interleaving, both end with
  the alias on the newest version, which is what running them one after the other gives.
- Before each move, the version about to become champion is tagged with the champion read just
  before (``kdh.previous_champion``): every value written there is one the alias really held. A
  racer that held the alias and then finds a newer version in its place, tagged with the champion
  from before it, rewrites that tag to itself: it was champion in between. With two racers the
  chain then lists every version that held the alias, in order. The previous champion is always an
  older version, so the chain only goes back and rollback ends.
- Collisions and busy stores are retried; a store that keeps refusing, or any other registry
  error, is a ``RuntimeFailure`` (exit 3) that says what to do, never a raw SQL or REST error.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

from harness.errors import BadInput, RuntimeFailure
from harness.models import ModelRef, fingerprint
from harness.registry_calls import ATTEMPTS, call, client, model_version, pause, registered_model

CHAMPION = "champion"
ARTIFACT_PATH = "promoted"
PREVIOUS_TAG = "kdh.previous_champion"
FINGERPRINT_TAG = "kdh.fingerprint"
PROMOTED_TAG = "kdh.promoted_at"
ROLLED_BACK_TAG = "kdh.rolled_back_at"
HISTORY_COLUMNS = ["version", "created", "champion", "promoted_at", "rolled_back_at", "previous_champion",
                   "fingerprint", "run_id", "source"]


def registered_name(suite_name: str) -> str:
    return f"kdh-{suite_name}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def champion_version(name: str):
    """The ModelVersion the alias ``champion`` points at; None if the model or alias is missing.

    Read from the registered model's alias map: a missing alias makes
    ``get_model_version_by_alias`` raise INVALID_PARAMETER_VALUE, too broad a code to catch."""
    model = registered_model(name)
    if model is None or CHAMPION not in (model.aliases or {}):
        return None
    return model_version(name, model.aliases[CHAMPION])


def _ensure_registered(name: str) -> None:
    from mlflow.exceptions import MlflowException

    if call(f"reading registered model '{name}'", registered_model, name) is not None:
        return

    def create() -> None:
        try:
            client().create_registered_model(name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":  # another process created it first
                raise

    call(f"registering model '{name}'", create)


# --------------------------------------------------------------------------------------------
# Where the files are: the source URI and the run that holds it


def _uri_parts(uri: str) -> tuple[str, str, list[str]]:
    """(scheme, authority, path parts) for comparing artifact locations; a bare path is a file URI."""
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):
        uri = Path(uri).expanduser().resolve().as_uri()
    parsed = urlsplit(uri)
    path = unquote(parsed.path)
    if parsed.scheme == "file":
        path = str(Path(path).resolve())
    return parsed.scheme.lower(), parsed.netloc.lower(), [p for p in path.split("/") if p]


def _within(source: str, root: str) -> bool:
    s_scheme, s_host, s_parts = _uri_parts(source)
    r_scheme, r_host, r_parts = _uri_parts(root)
    return (s_scheme, s_host) == (r_scheme, r_host) and ".." not in s_parts and s_parts[:len(r_parts)] == r_parts


def _run(run_id: str):
    """The run, or None if the store has no run by that id."""
    from mlflow.exceptions import MlflowException

    def get():
        try:
            return client().get_run(run_id)
        except MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise

    return call(f"reading run {run_id}", get)


def _source_run(source: str, source_run_id: str | None) -> str:
    """The id of the run that holds ``source``: ``source_run_id`` checked, else the active run if
    the source lies in it, else the run named in the URI (``…/<run id>/artifacts/…``, checked)."""
    import mlflow

    if source.startswith("runs:/"):
        named = source[len("runs:/"):].split("/", 1)[0]
        if source_run_id is not None and source_run_id != named:
            raise BadInput(f"source_uri {source} is in run {named}, but source_run_id names run {source_run_id}")
        if _run(named) is None:
            raise BadInput(f"source_uri {source}: there is no run {named} in this store")
        return named
    if source_run_id is not None:
        run = _run(source_run_id)
        if run is None:
            raise BadInput(f"source_run_id {source_run_id}: there is no such run in this store")
        if not _within(source, run.info.artifact_uri):
            raise BadInput(f"source_uri {source} is not among the artifacts of run {source_run_id} "
                           f"({run.info.artifact_uri}); give the id of the run that logged it")
        return source_run_id
    active = mlflow.active_run()
    if active is not None and _within(source, active.info.artifact_uri):
        return active.info.run_id
    named = re.search(r"/([0-9a-f]{32})/artifacts(/|$)", source)
    run = _run(named.group(1)) if named else None
    if run is not None and _within(source, run.info.artifact_uri):
        return run.info.run_id
    raise BadInput(f"source_uri {source}: cannot tell which run holds it; pass source_run_id= with the id of "
                   "the run that logged those files (a model version's run must contain its source)")


def _log_folder(model_dir: Path) -> tuple[str, str]:
    """Copy the folder into the active run; (the artifact URI of the copy, the run's id)."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise BadInput("promote needs an active MLflow run to log the model into (mlflow.start_run), "
                       "or source_uri= naming files already logged, e.g. an earlier run's .../artifacts/student")
    # A second log into the same path would overwrite the files an earlier version points at.
    if call(f"listing the artifacts of run {run.info.run_id}", client().list_artifacts, run.info.run_id, ARTIFACT_PATH):
        raise BadInput(f"run {run.info.run_id} already holds a promoted model under '{ARTIFACT_PATH}'; "
                       "promote each model from its own run")
    mlflow.log_artifacts(str(model_dir), artifact_path=ARTIFACT_PATH)
    return f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT_PATH}", run.info.run_id


# --------------------------------------------------------------------------------------------
# Promote, roll back


def _alias_state(name: str) -> tuple[int | None, int]:
    """(the version ``champion`` points at or None, the newest version number)."""
    model = call(f"reading registered model '{name}'", registered_model, name)
    if model is None:
        raise RuntimeFailure(f"registered model '{name}' was deleted while a version was being promoted; "
                             "promote again")
    current = (model.aliases or {}).get(CHAMPION)
    newest = max((int(v.version) for v in model.latest_versions or []), default=0)
    return (int(current) if current is not None else None), newest


def _set_previous(name: str, version: int, previous: int | None) -> None:
    call(f"tagging '{name}' version {version}", client().set_model_version_tag, name, str(version),
          PREVIOUS_TAG, "" if previous is None else str(previous))


def _move_champion(name: str, mine: int, previous: int | None) -> tuple[int, int | None]:
    """Move ``champion`` to ``mine``, or to a newer version a concurrent promotion made (the
    module docstring says why). Returns (the champion, ``mine``'s previous champion)."""
    held = False  # whether the alias pointed at mine at some moment (a set that succeeded)
    for attempt in range(ATTEMPTS):
        current, newest = _alias_state(name)
        target = max(newest, mine)
        if current == target:
            if target != mine and held:  # mine was champion between the newer one's read and its move
                found = call(f"reading '{name}' version {target}", model_version, name, target)
                recorded = found.tags.get(PREVIOUS_TAG, "") if found is not None else str(mine)
                if not recorded or (recorded.isdigit() and int(recorded) < mine):  # it skipped over mine
                    _set_previous(name, target, mine)
            return target, previous
        if target != mine:
            newer = call(f"reading '{name}' version {target}", model_version, name, target)
            if newer is None or newer.tags.get(ROLLED_BACK_TAG):  # deleted or already rolled back: leave it
                return (current if current is not None else mine), previous
        # Record what the alias holds now as the target's previous champion, then move the alias.
        _set_previous(name, target, current)
        if target == mine:
            previous = current
        call(f"moving '{name}@{CHAMPION}' to version {target}", client().set_registered_model_alias,
              name, CHAMPION, str(target))
        held = held or target == mine
        if attempt:
            pause(attempt - 1)  # a racer keeps moving it back: let it finish first
    raise RuntimeFailure(f"'{name}@{CHAMPION}': other promotions kept moving the alias for {ATTEMPTS} tries, so "
                         f"version {mine} may not be champion; check with `kdh promote --list` and promote again")


def promote(model_dir, name: str, *, source_uri: str | None = None, source_run_id: str | None = None,
            tags: dict | None = None) -> dict:
    """Register ``model_dir`` as a new version of ``name`` and move ``champion`` to it.

    Without ``source_uri`` the folder is logged into the active run, which becomes the version's
    run. With ``source_uri`` the files are not logged again; the version points there (the caller
    vouches that it holds the same bytes as ``model_dir``, which the fingerprint is taken from), and
    its run is ``source_run_id``: the run that logged those files (checked). Without
    ``source_run_id`` that is the active run if the source lies in it, else the run the URI names.

    When another promotion of ``name`` overlaps, the newer version becomes champion; the result's
    ``champion`` says which (``version`` otherwise)."""
    model_dir = Path(model_dir).expanduser().resolve()
    digest = fingerprint(ModelRef(name=name, source=str(model_dir)))  # also checks it is a model folder
    if not any(model_dir.glob("*.safetensors")):
        raise BadInput(f"{model_dir} has no *.safetensors weights; kdh loads safetensors only, "
                       "so it cannot be promoted")
    if source_uri is None:
        if source_run_id is not None:
            raise BadInput("source_run_id names the run that holds source_uri; give source_uri too, or neither")
        source, run_id = _log_folder(model_dir)
    else:
        source, run_id = source_uri, _source_run(source_uri, source_run_id)
    _ensure_registered(name)
    current, _ = _alias_state(name)
    all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
    all_tags.update({FINGERPRINT_TAG: digest, PREVIOUS_TAG: "" if current is None else str(current),
                     PROMOTED_TAG: _now()})
    version = call(f"registering {source} as a version of '{name}'", client().create_model_version,
                    name, source=source, run_id=run_id, tags=all_tags)
    mine = int(version.version)
    champion, previous = _move_champion(name, mine, current)
    return {"name": name, "version": mine, "previous": previous, "champion": champion, "source": source,
            "run_id": run_id, "fingerprint": digest}


def rollback(name: str) -> dict:
    """Move ``champion`` back to the version the current one replaced; versions are kept."""
    current = call(f"reading the champion of '{name}'", champion_version, name)
    if current is None:
        raise BadInput(f"'{name}' has no champion to roll back from; promote a model first")
    previous = current.tags.get(PREVIOUS_TAG, "")
    if not previous:
        raise BadInput(f"'{name}' version {current.version} was the first champion, so there is no earlier "
                       "one to roll back to; promote another model instead")
    if call(f"reading '{name}' version {previous}", model_version, name, previous) is None:
        raise BadInput(f"'{name}' version {current.version} replaced version {previous}, which no longer "
                       f"exists in the registry; promote the model you want instead")
    # Move the alias before tagging: a failure in between leaves a correct champion, only a missing note.
    call(f"moving '{name}@{CHAMPION}' to version {previous}", client().set_registered_model_alias,
          name, CHAMPION, previous)
    call(f"tagging '{name}' version {current.version}", client().set_model_version_tag,
          name, str(current.version), ROLLED_BACK_TAG, _now())
    return {"name": name, "version": int(previous), "left": int(current.version)}


def history(name: str):
    """One row per version, newest first."""
    import pandas as pd

    model = registered_model(name)
    if model is None:
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    # search_model_versions leaves ModelVersion.aliases empty (3.17, SQL store): ask the model.
    champion = (model.aliases or {}).get(CHAMPION)
    versions = client().search_model_versions(f"name = '{name}'")
    rows = [{"version": int(v.version),
             "created": pd.to_datetime(v.creation_timestamp, unit="ms", utc=True),
             "champion": champion is not None and int(v.version) == int(champion),
             "promoted_at": v.tags.get(PROMOTED_TAG, ""), "rolled_back_at": v.tags.get(ROLLED_BACK_TAG, ""),
             "previous_champion": v.tags.get(PREVIOUS_TAG, ""), "fingerprint": v.tags.get(FINGERPRINT_TAG, ""),
             "run_id": v.run_id or "", "source": v.source} for v in versions]
    frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    return frame.sort_values("version", ascending=False, ignore_index=True)


def promoted_line(promoted: dict) -> str:
    """What a promotion did, in one line: a newer concurrent promotion may hold the alias now."""
    name, version, champion = promoted["name"], promoted["version"], promoted["champion"]
    if champion == version:
        return f"models:/{name}@champion → version {version} (was {promoted['previous'] or 'none'})"
    return (f"models:/{name}: version {version} registered, but version {champion}, promoted at the same time "
            "and newer, holds champion")
