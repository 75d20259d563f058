"""`kdh dashboard`: the Streamlit app in dashboards/app.py, on localhost, against kdh's store.

The tracking URI resolves as for every verb (``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else
the kdh home's SQLite store), and a server that does not answer stops here with exit code 2, before
Streamlit starts. The app reads MLflow and writes nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

from harness import console, home, tracking
from harness.errors import BadInput

APP = Path(__file__).resolve().parent.parent / "dashboards" / "app.py"


def command(uri: str, host: str, port: int) -> list[str]:
    """The Streamlit command line. Headless: no browser is opened and no usage statistics are
    sent; the file watcher is off (nothing to reload in an installed app); the toolbar shows no
    developer options (deploy, rerun on save)."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", host, "--server.port", str(port),
           "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
           "--client.toolbarMode", "viewer", "--"]
    # A URI with a password goes in the environment instead: a command line is visible to every
    # user of the machine (ps).
    return cmd + ([] if tracking.redact(uri) != uri else ["--tracking-uri", uri])


def cmd_dashboard(args) -> int:
    if find_spec("streamlit") is None:
        raise BadInput("the dashboard needs Streamlit: pip install 'kdh[dashboard]'")
    if not APP.is_file():
        raise BadInput(f"{APP} is missing: the dashboard runs from a checkout of kdh (pip install -e .)")
    uri = tracking.connect(args.tracking_uri or home.tracking_uri())  # a dead server: exit 2 now
    where = f"http://{'localhost' if args.host in ('127.0.0.1', 'localhost') else args.host}:{args.port}"
    console.note(f"kdh dashboard · {where} · store {tracking.redact(uri)} · Ctrl-C stops it")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    try:
        return subprocess.run(command(uri, args.host, args.port), env=env, check=False).returncode
    except KeyboardInterrupt:  # Ctrl-C reaches Streamlit too, which shuts down on it
        return 0


def add_verb(verbs) -> None:
    da = verbs.add_parser("dashboard", help="the Streamlit dashboard over kdh's MLflow store (localhost)")
    da.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the kdh home)")
    da.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    da.add_argument("--port", type=int, default=8501)
    da.set_defaults(func=cmd_dashboard)
