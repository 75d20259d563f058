"""Calls to MLflow's model registry: the reads kdh needs, and writes that survive concurrent writers.

Two kdh processes promoting at once can collide inside MLflow: setting an alias is an insert-or-update
(SQLite: ``UNIQUE constraint failed``, PostgreSQL: ``duplicate key``), and a busy store refuses a
write for a moment. ``call`` retries such conflicts with a growing, jittered pause; what is left
after ``ATTEMPTS`` tries, or any other registry error, becomes a ``RuntimeFailure`` (exit 3) that says
what failed and what to do, never the store's raw SQL or REST text. harness/promotion.py says how
racing promotions agree on one champion.
"""

from __future__ import annotations

import random
import re
import time

from harness.errors import KdhError, RuntimeFailure


def client():
    from mlflow import MlflowClient

    return MlflowClient()


def registered_model(name: str):
    """The registered model, or None if there is none by that name (other errors propagate)."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def model_version(name: str, version) -> object | None:
    """The ModelVersion, or None if the model or the version does not exist (other errors propagate)."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version(name, str(version))
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise



ATTEMPTS = 8  # tries per registry call and per alias move
BACKOFF_S = 0.1  # first wait between tries; doubles, capped at BACKOFF_MAX_S, with jitter
BACKOFF_MAX_S = 2.0
# What a store says when two writers collide or it is busy: worth another try.
_CONFLICT = re.compile(r"IntegrityError|UNIQUE constraint|duplicate key|database is locked|deadlock|"
                       r"could not serialize|Model Version creation error", re.IGNORECASE)
# (A server's 5xx replies are retried by MLflow's HTTP client already; a conflict comes back as 400.)
_RETRY_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}


def _transient(err: Exception) -> bool:
    """A concurrent-write conflict or a busy store: the same call may succeed a moment later."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        return err.error_code in _RETRY_CODES or bool(_CONFLICT.search(str(err)))
    try:
        import sqlalchemy.exc
    except ImportError:  # pragma: no cover  (MLflow's SQL stores need it)
        return False
    return isinstance(err, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError))


def pause(attempt: int) -> None:
    delay = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** attempt)
    time.sleep(delay * (0.5 + random.random()))  # jitter: two racers do not retry in step


def _failure(what: str, err: Exception) -> RuntimeFailure:
    """A registry error as kdh's message: what failed, MLflow's error code, what to do; the
    store's own text (SQL, a REST body) stays out of it."""
    code = getattr(err, "error_code", None) or type(err).__name__
    if _transient(err):
        why = (f"the model registry kept refusing it after {ATTEMPTS} tries ({code}: other processes were "
               "writing at the same time, or the store was busy)")
    else:
        first = (str(getattr(err, "message", err)).strip().splitlines() or [""])[0][:200]
        raw = not first or re.search(r"sqlalchemy|sqlite3|psycopg|\[SQL:|Traceback", first, re.IGNORECASE)
        why = f"the model registry refused it ({code}{'' if raw else ': ' + first})"
    return RuntimeFailure(f"{what}: {why}. Check the registry with `kdh promote --list` and run the command again")


def call(what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, retried with backoff while the store reports a conflict; any
    failure left is a RuntimeFailure naming ``what``."""
    for attempt in range(ATTEMPTS):
        try:
            return fn(*args, **kwargs)
        except KdhError:
            raise
        except Exception as err:  # MLflow raises SQL and HTTP errors of many kinds
            if not _transient(err):
                raise _failure(what, err) from err
            if attempt == ATTEMPTS - 1:
                raise _failure(what, err) from err
            pause(attempt)
    raise AssertionError("unreachable")
