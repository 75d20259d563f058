"""kdh commands in processes of their own, for the tests that need several at once or one to kill.

A new interpreter spends about 8 CPU-seconds importing torch, transformers, MLflow, lm-eval and
Great Expectations before kdh does anything: most of what a command on the tiny world costs, and
on a busy 2-core CI machine most of these tests' time (docs/ci.md). Here each command is forked
from a server process that imported them once (multiprocessing's forkserver, with those modules
preloaded), and runs kdh's entry point, ``harness.cli.main``, as ``kdh ARGS`` does. It is a process
of its own: its own pid, memory, environment, working folder, file descriptors 1 and 2 (into
files here) and exit code; it writes the same stores and files, and a signal reaches it as it
would a ``kdh`` started from a shell. What it does not repeat is the imports, so the tests about
what a new interpreter prints (tests/test_console.py, tests/test_loop.py) start
``python -m harness.cli`` themselves.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

# Imported once by the server; every module a kdh command would import on its own.
PRELOAD = ["torch", "transformers", "accelerate", "mlflow", "great_expectations", "lm_eval.evaluator", "pandas",
           "harness.cli", "harness.scoring", "harness.validation", "harness.tracking", "harness.promotion",
           "distiller.trainer"]


def context():
    """The forkserver context; the preload applies when its server first starts (once per worker)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _kdh_main(argv: list[str], env: dict, cwd: str, out: str, err: str) -> None:
    """In the forked process: become `kdh ARGV` started in ``cwd`` with ``env``, then exit with its code."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115  line-buffered, as a terminal's
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.argv = ["kdh", *argv]
    import torch

    torch.set_num_threads(int(env.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    from harness.cli import main

    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    atexit._run_exitfuncs()  # what an interpreter's exit would run (os._exit below skips it)
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(code)


class KdhProcess:
    """A running kdh command, with the part of ``subprocess.Popen`` the tests use."""

    def __init__(self, argv: list[str], env: dict, cwd: Path, merge_output: bool):
        self._folder = tempfile.TemporaryDirectory(prefix="kdh-process-")  # removed with this object
        self._out = Path(self._folder.name) / "stdout"
        self._err = self._out if merge_output else Path(self._folder.name) / "stderr"
        for path in {self._out, self._err}:
            path.touch()
        self._process = context().Process(target=_kdh_main, args=(argv, env, str(cwd), str(self._out), str(self._err)))
        self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit code; minus the signal's number for a process a signal ended, as Popen's."""
        return self._process.exitcode

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.returncode is None:
            raise TimeoutError(f"kdh (pid {self.pid}) still running after {timeout} s")
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def output(self) -> str:
        """What it has written to its standard output so far (with its standard error when merged)."""
        return self._out.read_text(errors="replace")

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.output(), self._err.read_text(errors="replace")


def kdh(args: list[str], uri: str, cwd: Path, *, merge_output: bool = False, **env: str) -> KdhProcess:
    """``kdh ARGS`` in a process of its own, against the tracking ``uri`` (stdout and stderr apart, or merged)."""
    return KdhProcess(args, {**os.environ, "MLFLOW_TRACKING_URI": uri, **env}, cwd, merge_output)


def finish(procs, timeout: float = 900) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each process, in order."""
    deadline = time.monotonic() + timeout
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        results.append((proc.returncode, out, err))
    return results
