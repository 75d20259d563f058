"""`kdh distill` end to end on the tiny demo world: a real training loop, real checkpoints, a real
MLflow store. What a user relies on: a standard transformers student comes out, the domain
weights are tracked at every update, a damaged checkpoint is skipped (kills and resumes:
tests/test_reliability.py; two processes under `accelerate launch`: tests/test_sharded.py)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from harness.cli import main
from harness.demo import DOMAINS

# Small but real: 4 domains, updates every 4 steps, a checkpoint every 4 steps.
ARGS = ["--steps", "16", "--interval", "4", "--save-every", "4", "--batch-size", "4", "--block-size", "64"]


def weights_of(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def same_weights(a: Path, b: Path) -> bool:
    left, right = weights_of(a), weights_of(b)
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


@pytest.fixture(scope="module")
def distilled(tiny_world, tmp_path_factory):
    folder = tmp_path_factory.mktemp("distill")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    code = main(["distill", *ARGS, "--out", str(folder / "run"), "--tracking-uri", uri])
    return code, folder, uri, tiny_world


@pytest.mark.slow
def test_distill_writes_a_standard_student_that_moved(distilled):
    from transformers import AutoModelForCausalLM

    code, folder, _, world = distilled
    assert code == 0
    student = folder / "run" / "student"
    model = AutoModelForCausalLM.from_pretrained(student)  # a standard transformers folder
    assert model.config.vocab_size == AutoModelForCausalLM.from_pretrained(world.student_dir).config.vocab_size
    assert not same_weights(student, world.student_dir)
    assert [p.name for p in sorted((folder / "run" / "checkpoints").iterdir())] == ["step-0000012", "step-0000016"]


@pytest.mark.slow
def test_mlflow_tracks_loss_and_the_weights_at_every_update(distilled):
    code, folder, uri, _ = distilled
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["kdh/default"])
    assert len(runs) == 1 and runs["status"].iloc[0] == "FINISHED" and runs["tags.kdh.kind"].iloc[0] == "distill"
    client = mlflow.MlflowClient()
    run_id = runs["run_id"].iloc[0]
    steps = [m.step for m in client.get_metric_history(run_id, "ddk/weight/records")]
    assert steps == [0, 4, 8, 12]  # the start and every K = 4 steps before the end
    for step in steps:
        total = sum(m.value for d in DOMAINS for m in client.get_metric_history(run_id, f"ddk/weight/{d}") if m.step == step)
        assert total == pytest.approx(1.0)
    floor = 0.5 / len(DOMAINS)  # Eq. 2's (1 − α)/N
    assert all(m.value >= floor - 1e-9 for d in DOMAINS for m in client.get_metric_history(run_id, f"ddk/weight/{d}")
               if m.step > 0)
    assert len(client.get_metric_history(run_id, "loss")) >= 1
    assert runs["metrics.tokens_per_s"].iloc[0] > 0
    history = json.loads((folder / "run" / "ddk_history.rank0.json").read_text())
    assert [h["step"] for h in history] == steps


@pytest.mark.slow
def test_the_weights_follow_the_gaps(distilled):
    """DDK: the first interval samples the natural mixture (Algorithm 1); from the first update on,
    r_1 ∝ r_0·exp(ratio_1) with r_0 ∝ exp(ratio_0), so the weights rank as ratio_0 + ratio_1 do:
    the domains where the student lags most get the most data."""
    _, folder, _, _ = distilled
    history = json.loads((folder / "run" / "ddk_history.rank0.json").read_text())
    lag = {d: history[0][f"ratio/{d}"] + history[1][f"ratio/{d}"] for d in DOMAINS}
    weights = {d: history[1][f"weight/{d}"] for d in DOMAINS}
    assert sorted(DOMAINS, key=weights.get) == sorted(DOMAINS, key=lag.get)
    assert max(weights.values()) > 1 / len(DOMAINS) > min(weights.values())


@pytest.mark.slow
def test_a_corrupt_checkpoint_is_skipped_for_the_previous_good_one(distilled, tmp_path):
    from distiller.checkpoint import latest_good

    _, folder, _, _ = distilled
    import shutil

    shutil.copytree(folder / "run" / "checkpoints", tmp_path / "checkpoints")
    newest = tmp_path / "checkpoints" / "step-0000016" / "student" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:-100])  # a torn write
    path, state = latest_good(tmp_path / "checkpoints")
    assert path.name == "step-0000012" and state["step"] == 12
