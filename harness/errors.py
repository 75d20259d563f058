"""kdh's own errors, each tied to the exit code that CI depends on.

0 pass, 1 the gate failed, 2 bad input or config, 3 a failure while running.
"""

from __future__ import annotations

from contextlib import contextmanager

EXIT_PASS = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_RUNTIME = 3


class KdhError(Exception):
    """Base class: a message a person can act on, and the exit code that goes with it."""

    exit_code = EXIT_RUNTIME


class BadInput(KdhError):
    """The user's files, flags or models are wrong; the message names what and how to fix it."""

    exit_code = EXIT_BAD_INPUT


class SuiteError(BadInput):
    """A suite file is invalid. Carries the file and the field (a dotted path) it is about."""

    def __init__(self, file, field: str | None, message: str):
        self.file, self.field = file, field
        where = f"{file}" + (f": {field}" if field else "")
        super().__init__(f"{where}: {message}")


class ValidationFailed(BadInput):
    """A scorecard (or a prepared corpus: ``subject``) failed its data-quality checks; nothing
    downstream may trust it."""

    def __init__(self, failures: list[str], subject: str = "the scorecard"):
        self.failures = failures
        lines = "\n".join(f"  - {f}" for f in failures)
        super().__init__(f"{subject} failed {len(failures)} validation check(s):\n{lines}")


class RuntimeFailure(KdhError):
    """Something broke while running (an evaluation, a write); exit code 3."""

    exit_code = EXIT_RUNTIME


@contextmanager
def distill_errors():
    """The distiller's errors as kdh's: its InputError is bad input (exit 2: a tokenizer mismatch, a
    setting out of range, unreadable data), its DistillError a failure while running (exit 3). Any
    other exception is a bug and stays one."""
    from distiller.errors import DistillError, InputError

    try:
        yield
    except InputError as err:
        raise BadInput(str(err)) from err
    except DistillError as err:
        raise RuntimeFailure(str(err)) from err
