"""The distiller's two kinds of error: the caller's input is wrong, or a run broke.

A program that drives the distiller (kdh's CLI) reports the first as bad input and the second as a
failure while running; any other exception is a bug in the distiller, not the user's doing.
"""

from __future__ import annotations


class InputError(ValueError):
    """A setting, a data file or a pairing of models the distiller cannot take; the message names
    it and what to do. A ValueError, so plain Python callers may catch it as one."""


class DistillError(RuntimeError):
    """A failure while distilling (a non-finite loss, say); the last good checkpoint is kept."""
