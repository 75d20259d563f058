"""A quiet console: kdh's own lines on the terminal, everything the libraries print in a log file that
the MLflow run keeps (for `kdh loop`: tests/test_loop.py); `-v` puts the libraries' output back on the
terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path


# What other libraries print: log records, git's complaint outside a repository, and the progress
# bars of transformers, datasets and lm-eval. kdh's own bars are "scoring" and "distill".
LIBRARY_LINE = re.compile(r"\b(INFO|WARNING|DEBUG)\b|^fatal:|Loading weights|loglikelihood|Generating test split|"
                          r"Token indices|Writing model shards|Tokenizing inputs|^\s*\d+%\|")
KDH_BARS = ("scoring:", "distill:")


def lines_of(text: str) -> list[str]:
    return [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()]


def library_lines(text: str) -> list[str]:
    return [line for line in lines_of(text) if not line.startswith(KDH_BARS) and LIBRARY_LINE.search(line)]


def test_descriptors_go_to_the_log_and_kdh_lines_to_the_terminal(tmp_path):
    """Python, C-level and child-process output all reach the log; console.say/note do not."""
    script = textwrap.dedent(f"""
        import os, subprocess, sys
        from pathlib import Path
        from harness import console
        with console.to_log(Path({str(tmp_path / 'run.log')!r})):
            console.say("a result")
            console.note("a progress line")
            print("from a library, on stdout")
            print("from a library, on stderr", file=sys.stderr)
            os.write(2, b"written to descriptor 2\\n")
            subprocess.run(["sh", "-c", "echo from a child process >&2"], check=True)
        print("after the block")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["a result", "after the block"]
    assert done.stderr.splitlines() == ["a progress line"]
    log = (tmp_path / "run.log").read_text()
    for line in ("from a library, on stdout", "from a library, on stderr", "written to descriptor 2",
                 "from a child process"):
        assert line in log


def test_verbose_shows_the_libraries_output_and_quiet_keeps_it_in_the_log(tiny_world, tmp_path):
    """MLflow logs the creation of its tables (kdh makes one empty store per kdh home, then copies
    it): on the console with -v only. Each run gets a kdh home without that empty store (sharing the
    session's demo world)."""
    def run(*flags: str, store: str):
        home = tmp_path / f"home-{store}"
        home.mkdir()
        (home / "demo").symlink_to(Path(os.environ["KDH_HOME"]) / "demo")
        done = subprocess.run([sys.executable, "-m", "harness.cli", *flags, "promote", "--list", "--tracking-uri",
                               f"sqlite:///{tmp_path / store}"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600, env={**os.environ, "KDH_HOME": str(home)})
        return done, home

    (verbose, _), (quiet, home) = run("-v", store="verbose.db"), run(store="quiet.db")
    assert verbose.returncode == 0 and quiet.returncode == 0, verbose.stderr[-3000:] + quiet.stderr[-3000:]
    assert library_lines(verbose.stderr), "with -v the libraries' output stays on the console"
    assert library_lines(quiet.stdout + quiet.stderr) == []
    assert "version" in quiet.stdout  # kdh's own table
    log = max((home / "logs").glob("promote-*.log"), key=lambda p: p.stat().st_mtime)
    assert "Creating initial MLflow database tables" in log.read_text()
