"""Where kdh keeps its state, and the environment it runs in.

The kdh home (``KDH_HOME``, default ``~/.kdh``) holds the demo world, the local MLflow store and
the evaluation outputs. Offline by default: the hub variables are set before transformers,
datasets or lm-eval are imported, so nothing is fetched at run time unless the user unsets them.
"""

from __future__ import annotations

import os
from pathlib import Path

_OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "GX_ANALYTICS_ENABLED": "false",
    # MLflow prints "View run … at: <tracking URI>" on stdout, credentials and all.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # lm-eval's bootstrap runs a process pool otherwise; with 2 cores it costs more than it saves.
    "DISABLE_MULTIPROC": "1",
}


def configure_environment() -> None:
    """Set the offline and quiet defaults; a value the user already set wins."""
    for key, value in _OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)


def kdh_home() -> Path:
    home = Path(os.environ.get("KDH_HOME") or Path.home() / ".kdh").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite store under the kdh home."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{kdh_home() / 'mlflow.db'}"


def artifact_root() -> Path:
    """Artifacts of experiments kdh creates in a local store (MLflow would use ./mlruns)."""
    return kdh_home() / "mlartifacts"


def repo_suites_dir() -> Path:
    """The suites that ship with kdh (the package is installed editable from the repo)."""
    return Path(__file__).resolve().parent.parent / "suites"
