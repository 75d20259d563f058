"""``models:/NAME@ALIAS`` and ``models:/NAME/VERSION``: which registered version they name, and a local
copy of its files that transformers can load.

An alias is resolved to its version first: the alias moves, a version's files never change, so a
version is downloaded once, into ``$KDH_HOME/models/NAME/VERSION``, and checked against the
fingerprint recorded when it was promoted. MLflow must already point at the store that names it
(``harness.tracking.connect``).
"""

from __future__ import annotations

import json
from pathlib import Path

from distiller.files import write_atomic_folder
from harness import home
from harness.errors import BadInput, RuntimeFailure
from harness.models import ModelRef, fingerprint
from harness.promotion import FINGERPRINT_TAG
from harness.registry_calls import client, model_version, registered_model

# Written into each downloaded folder: the cache is keyed by name/version only, and the same name
# and version in another store (another MLFLOW_TRACKING_URI) are different files.
_ORIGIN_FILE = ".kdh-origin.json"


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
    model = registered_model(name)
    if model is None:
        known = sorted(m.name for m in client().search_registered_models(max_results=1000))
        raise BadInput(f"'{source}': no registered model '{name}'; registered: {', '.join(known) or 'none'}")
    aliases = model.aliases or {}
    if alias is not None:
        if alias not in aliases:
            listed = ", ".join(f"{a} (version {v})" for a, v in sorted(aliases.items())) or "none"
            raise BadInput(f"'{source}': '{name}' has no alias '{alias}'; its aliases: {listed}")
        version = str(aliases[alias])
    found = model_version(name, version)
    if found is None:
        known = sorted(int(v.version) for v in client().search_model_versions(f"name = '{name}'"))
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
