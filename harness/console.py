"""What kdh prints, and where everything else goes.

kdh's own lines: results on stdout (tables a person or a pipe reads), progress on stderr (a note per
step and one bar per phase, with rate and ETA). The libraries' output (their logs, warnings and
progress bars, and what their child processes print: lm-eval asks git for a hash) goes to a log
file, which the run's MLflow run keeps as an artifact; ``kdh -v`` shows it on the console instead.

How: ``to_log(path)`` points the process's file descriptors 1 and 2 at the log file, so whatever
writes there lands in the log, from Python, C or a child process alike. kdh keeps streams on
duplicates of the original descriptors and writes its own lines there. Where ``sys.stdout`` is not
the process's descriptor 1 (pytest's capture, say), kdh's lines go to ``sys.stdout`` and
``sys.stderr`` as they are, and only the descriptors are redirected.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

_streams: dict[str, object] = {}  # "out", "err": kdh's own streams while the descriptors point at the log
_log: list[Path] = []  # the log file of the command running now, if any


def _out():
    return _streams.get("out") or sys.stdout


def _err():
    return _streams.get("err") or sys.stderr


def say(text: str = "") -> None:
    """A result line, on stdout."""
    print(text, file=_out(), flush=True)


def note(text: str) -> None:
    """A progress line, on stderr: stdout holds only what a person (or a pipe) reads as results."""
    print(text, file=_err(), flush=True)


def progress_stream():
    """Where kdh's progress bars draw (tqdm's ``file=``)."""
    return _err()


def bar(iterable=None, **options):
    """kdh's progress bar for one phase: rate and ETA, redrawn in place on a terminal and now and
    then in a CI log."""
    from tqdm.auto import tqdm

    stream = _err()
    interactive = getattr(stream, "isatty", lambda: False)()
    return tqdm(iterable, file=stream, dynamic_ncols=True, mininterval=0.1 if interactive else 15, **options)


def log_path() -> Path | None:
    """The log file the libraries' output goes to in this command, if any."""
    return _log[-1] if _log else None


def _is_descriptor(stream, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return False


@contextmanager
def to_log(path: Path):
    """Send descriptors 1 and 2 (the libraries' output) to ``path`` for the block; kdh's own lines
    still reach the console."""
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "a", buffering=1, encoding="utf-8")
    own = {name: _is_descriptor(stream, fd) for name, stream, fd in (("out", sys.stdout, 1), ("err", sys.stderr, 2))}
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    for name, fd in (("out", 1), ("err", 2)):
        if own[name]:  # kdh's lines keep the console: a stream on a copy of the descriptor
            _streams[name] = open(os.dup(saved[fd]), "w", buffering=1, encoding="utf-8", errors="replace")
        os.dup2(log.fileno(), fd)
    _log.append(path)
    try:
        yield path
    finally:
        for stream in (sys.stdout, sys.stderr, *_streams.values()):
            stream.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        for stream in _streams.values():
            stream.close()
        _streams.clear()
        _log.pop()
        log.close()
