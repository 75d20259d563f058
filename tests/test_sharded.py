"""Training beyond one process, and in bounded memory, on the tiny demo world with real processes
(docs/sharded.md): two processes with the student sharded (FSDP2 on gloo) train the same student,
step by step, as one process given the same global batch; a two-process FSDP run killed after a
checkpoint and resumed as a two-process DDP run ends with that same student (a checkpoint is one
format under either engine); gradient accumulation equals one big batch; bf16 autocast keeps
float32 weights.

What "the same" means here: one process and two differ only in the order floats are summed (a
reduce-scatter of two halves against one sum), so losses agree to 1e-5 relative and weights to
1e-5 absolute. (A resumed single-process run is bit-identical to an uninterrupted one:
tests/test_reliability.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distiller.checkpoint import latest_good
from harness.cli import main

# 8 steps of a global batch of 8 rows, a mixture update at step 4. Checkpoints cost time and change
# nothing in the training: only the run to be killed writes one every 2 steps, so a kill at the
# first leaves six steps to resume.
STEPS = 8
ARGS = ["distill", "--steps", str(STEPS), "--interval", "4", "--save-every", str(STEPS), "--block-size", "64"]
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    """One MLflow store for the module's runs, one after another: a new SQLite store costs seconds
    of schema migrations."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'm.db'}"


def launch(out: Path, uri: str, *extra: str, sharding: str = "fsdp") -> subprocess.Popen:
    """`accelerate launch` of two processes (its torchrun launcher: `--cpu` would start one); kdh
    picks gloo where there is no GPU. A session of its own, so a kill reaches every rank."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "harness.cli", *ARGS, "--batch-size", "4", "--sharding", sharding, "--out", str(out),
           "--tracking-uri", uri, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher's process group and each rank's: torchrun starts every rank in a
    session of its own (torch.distributed.elastic's subprocess handler), out of the launcher's group."""
    ranks = [int(pid) for task in Path(f"/proc/{proc.pid}/task").iterdir()
             for pid in (task / "children").read_text().split()]
    for group in (*ranks, proc.pid):
        os.killpg(group, signal.SIGKILL)


def finish(proc: subprocess.Popen) -> None:
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-4000:]


def curve(out: Path) -> dict[int, float]:
    return {int(k): v for k, v in json.loads((out / "loss_curve.json").read_text()).items()}


def student(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "student" / "model.safetensors")


@pytest.fixture(scope="module")
def one_process(tiny_world, tmp_path_factory, uri):
    """The reference: one process, the global batch of 8 rows in one piece."""
    out = tmp_path_factory.mktemp("one") / "run"
    assert main([*ARGS, "--batch-size", "8", "--out", str(out), "--tracking-uri", uri]) == 0
    return out


@pytest.fixture(scope="module")
def two_processes(tiny_world, tmp_path_factory, uri):
    """Two processes, FSDP2, 4 rows each, run to the end."""
    out = tmp_path_factory.mktemp("two") / "run"
    finish(launch(out, uri))
    return out


def same_training(mine: Path, reference: Path, steps) -> None:
    """``mine`` logged the reference's loss at each of ``steps`` and ended with its weights, to float tolerance."""
    one, two = curve(reference), curve(mine)
    assert list(two) == list(steps)
    assert [two[s] for s in steps] == pytest.approx([one[s] for s in steps], rel=LOSS_RTOL)
    a, b = student(mine), student(reference)
    assert a.keys() == b.keys() and all(v.dtype == torch.float32 for v in a.values())
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= WEIGHT_ATOL


def test_two_sharded_processes_train_the_student_one_process_does(one_process, two_processes):
    same_training(two_processes, one_process, range(1, STEPS + 1))
    # The ranks sampled with the same DDK weights at every update (they are checked at each one).
    assert (json.loads((two_processes / "ddk_history.rank0.json").read_text())
            == json.loads((two_processes / "ddk_history.rank1.json").read_text()))


def test_a_sharded_run_killed_after_a_checkpoint_resumes_under_ddp_to_the_same_student(one_process, tmp_path, uri):
    out = tmp_path / "run"
    proc, started = launch(out, uri, "--save-every", "2"), time.monotonic()
    while not (out / "checkpoints" / "step-0000002").is_dir():  # renamed into place whole
        assert proc.poll() is None, f"the run ended before its first checkpoint: {proc.stdout.read()[-3000:]}"
        assert time.monotonic() - started < 300
        time.sleep(0.02)
    kill_all(proc)
    proc.communicate()
    assert not (out / "student").exists(), "the run finished before the kill: nothing was resumed"
    resumed_from = latest_good(out / "checkpoints")[1]["step"]
    finish(launch(out, uri, "--save-every", "2", "--resume", sharding="ddp"))
    same_training(out, one_process, range(resumed_from + 1, STEPS + 1))
    assert (json.loads((out / "ddk_history.rank0.json").read_text())
            == json.loads((out / "ddk_history.rank1.json").read_text()))


def test_gradient_accumulation_equals_one_big_batch(one_process, tmp_path, uri):
    out = tmp_path / "run"
    assert main([*ARGS, "--batch-size", "4", "--grad-accum", "2", "--out", str(out), "--tracking-uri", uri]) == 0
    assert list(curve(out).values()) == pytest.approx(list(curve(one_process).values()), rel=LOSS_RTOL)
    mine, theirs = student(out), student(one_process)
    assert max((mine[k] - theirs[k]).abs().max().item() for k in mine) <= WEIGHT_ATOL


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one state per process, made by the first run in it; a run in another
    precision needs a fresh one, as a new process has (and the tests after it too)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_autocast_trains_float32_weights(tiny_world, tmp_path, uri, fresh_accelerate_state):
    out = tmp_path / "run"
    assert main(["distill", "--steps", "2", "--save-every", "2", "--batch-size", "4", "--block-size", "64",
                 "--mixed-precision", "bf16", "--out", str(out), "--tracking-uri", uri]) == 0
    losses = list(curve(out).values())
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    weights = student(out)
    assert all(v.dtype == torch.float32 for v in weights.values())
    start = load_file(Path(tiny_world.student_dir) / "model.safetensors")
    assert any(not torch.equal(weights[k], start[k]) for k in weights)  # it trained
