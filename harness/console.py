"""What kdh prints: results on stdout (tables a person or a pipe reads), progress on stderr."""

from __future__ import annotations

import sys


def say(text: str = "") -> None:
    print(text, flush=True)


def note(text: str) -> None:
    """Progress lines go to stderr, so stdout holds the tables a person (or a pipe) reads."""
    print(text, file=sys.stderr, flush=True)
