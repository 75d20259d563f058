"""Failures while running, on the tiny demo world with real processes: a diverging loss stops the
run and keeps the last good checkpoint; a distillation killed while writing a checkpoint resumes
to the very same student; a loop cancelled (SIGTERM) or killed (SIGKILL) promotes nothing and never leaves
a run marked FINISHED; inputs that are not what they claim are bad input (exit 2)."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import mlflow
import pytest
import torch
from processes import KdhProcess, kdh
from safetensors.torch import load_file

from distiller.checkpoint import latest_good
from harness import promotion
from harness.cli import main

ARGS = ["--steps", "16", "--interval", "4", "--save-every", "4", "--batch-size", "4", "--block-size", "64"]


def run_cli(args: list[str], uri: str) -> KdhProcess:
    return kdh(args, uri, Path.cwd(), merge_output=True)


def runs(uri: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=["kdh/default"], output_format="list")


@pytest.fixture(scope="module")
def uninterrupted(tiny_world, tmp_path_factory):
    """One distillation run to the end: the student every interrupted run must reproduce. In this
    process: only the run to be killed needs one of its own (a new process costs seconds of imports)."""
    folder = tmp_path_factory.mktemp("reference")
    assert main(["distill", *ARGS, "--out", str(folder / "run"), "--tracking-uri", f"sqlite:///{folder / 'm.db'}"]) == 0
    return folder / "run" / "student"


# The kill point: in the middle of writing a checkpoint (its temporary folder exists), the moment
# that leaves the most behind: an earlier whole checkpoint, a half-written one and steps after the
# last one to redo. A point is an event, not a time, so a slow or busy machine moves the moment but
# not what it hits. (A kill at a step between checkpoints: tests/test_sharded.py, two processes.)
POINTS = ["mid-checkpoint"]


def reached(point: str, out: Path) -> bool:
    assert point == "mid-checkpoint"
    return any(p.name.startswith(".step-") for p in (out / "checkpoints").glob(".*"))


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_a_distillation_killed_at_any_point_resumes_to_the_same_student(uninterrupted, tmp_path, point):
    reference = uninterrupted
    uri, out = f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "run"
    proc, started = run_cli(["distill", *ARGS, "--out", str(out)], uri), time.monotonic()
    while not reached(point, out):
        assert proc.poll() is None, f"the run ended before {point}: {proc.output()[-2000:]}"
        assert time.monotonic() - started < 600
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "student").exists()  # it died before the end: nothing final was published
    assert main(["distill", *ARGS, "--out", str(out), "--resume", "--tracking-uri", uri]) == 0
    mine, theirs = load_file(out / "student" / "model.safetensors"), load_file(reference / "model.safetensors")
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_a_diverging_loss_stops_with_exit_3_and_keeps_the_last_good_checkpoint(tiny_world, tmp_path, capsys):
    uri, out = f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "run"
    code = main(["distill", "--steps", "8", "--save-every", "1", "--batch-size", "2", "--block-size", "32",
                 "--lr", "1e15", "--out", str(out), "--tracking-uri", uri])
    assert code == 3
    err = capsys.readouterr().err
    assert "the loss became nan" in err or "the weights became non-finite" in err
    assert not (out / "student").exists()
    path, state = latest_good(out / "checkpoints")
    assert path is not None and state["step"] >= 1
    weights = load_file(path / "student" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())  # the kept checkpoint is a good one
    (run,) = runs(uri)
    assert run.info.status == "FAILED" and "became n" in run.data.tags["kdh.error"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM])  # SIGKILL mid-run: the kill-and-resume test above
def test_a_loop_stopped_mid_way_promotes_nothing_and_finishes_no_run(tiny_world, lenient_suite, tmp_path, sig):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    proc = run_cli(["loop", "--suite", str(lenient_suite), "--steps", "200", "--interval", "10",
                    "--out", str(tmp_path / "out")], uri)
    started = time.monotonic()
    while not re.search(r"distill: .*\b[1-9]\d*/200 ", proc.output()):  # mid-distillation: steps are being taken
        assert proc.poll() is None, proc.output()[-2000:]
        assert time.monotonic() - started < 600
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    log = proc.output()
    mlflow.set_tracking_uri(uri)
    assert promotion.champion_version("kdh-default") is None
    found = runs(uri)
    loop = [r for r in found if r.data.tags.get("kdh.kind") == "loop"]
    assert len(loop) == 1 and loop[0].info.status != "FINISHED"
    unfinished = {r.data.tags.get("kdh.kind"): r.info.status for r in found if r.info.status != "FINISHED"}
    if sig == signal.SIGTERM:  # a clean stop: exit 3, the loop and its distillation marked KILLED
        assert proc.returncode == 3 and "interrupted" in log
        assert unfinished == {"loop": "KILLED", "distill": "KILLED"}
    else:  # SIGKILL leaves no chance to write: the runs stay RUNNING, never FINISHED
        assert proc.returncode == -signal.SIGKILL
        assert set(unfinished.values()) == {"RUNNING"}


def test_a_folder_that_is_not_a_causal_lm_or_lacks_a_tokenizer_is_bad_input(tiny_world, tmp_path, capsys):
    from transformers import ViTConfig, ViTModel

    vision = tmp_path / "vit"
    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=8, patch_size=4)).save_pretrained(vision)
    common = ["eval", "--model", f"teacher={tiny_world.teacher_dir}", "--limit", "2",
              "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    assert main([*common, "--model", f"student={vision}"]) == 2
    assert "is not a causal LM" in capsys.readouterr().err
    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((Path(tiny_world.student_dir) / name).read_bytes())
    assert main([*common, "--model", f"student={bare}"]) == 2
    assert "no usable tokenizer" in capsys.readouterr().err


def test_pickle_weights_load_only_when_allowed(tiny_world, tmp_path, capsys):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for item in Path(tiny_world.student_dir).iterdir():
        if item.suffix != ".safetensors":
            (pickled / item.name).write_bytes(item.read_bytes())
    torch.save(load_file(Path(tiny_world.student_dir) / "model.safetensors"), pickled / "pytorch_model.bin")
    common = ["eval", "--model", f"teacher={tiny_world.teacher_dir}", "--model", f"student={pickled}", "--limit", "2",
              "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--out", str(tmp_path / "out")]
    assert main(common) == 2
    assert "pickle weights only (pytorch_model.bin)" in capsys.readouterr().err
    assert main([*common, "--allow-pickle"]) == 0
    assert main(common) == 2, "a cached result must not let a refused model through"
