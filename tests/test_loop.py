"""`kdh loop` and `kdh promote` end to end on the tiny demo world: real scoring, real DDK
distillation, a real MLflow store and model registry. What a user relies on: the loop retrains the
weak domains and promotes only a candidate that passes; the champion is addressable as
`models:/kdh-<suite>@champion`; promotion needs a passing gate, and a rollback moves the alias back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from harness import promotion
from harness.cli import main
from harness.models import ModelRef, fingerprint
from harness.scorecard import Scorecard


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def looped(tiny_world, lenient_suite, tmp_path_factory):
    """`kdh loop` as a user runs it: its own process, in a folder that is not a git repository."""
    folder = tmp_path_factory.mktemp("loop")
    uri = f"sqlite:///{folder / 'mlflow.db'}"  # its own store: the registry starts empty
    # Two rounds allowed; after the first, no domain is below the (lenient) floor, so the second
    # only scores the new champion and stops.
    done = subprocess.run([sys.executable, "-m", "harness.cli", "loop", "--suite", str(lenient_suite), "--rounds", "2",
                           "--steps", "40", "--interval", "10", "--tracking-uri", uri, "--out", str(folder / "out"),
                           "--summary", str(folder / "summary.md")],
                          cwd=folder, capture_output=True, text=True, timeout=1200)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return done.returncode, folder, uri, tiny_world, done


def test_the_loop_prints_only_its_own_lines_and_keeps_the_libraries_output_with_its_run(looped):
    from test_console import library_lines

    *_, uri, _, done = looped
    assert library_lines(done.stdout + done.stderr) == []
    assert "Gate · candidate" in done.stdout and "scoring:" in done.stderr  # kdh's own result and bar
    mlflow.set_tracking_uri(uri)
    loop = mlflow.search_runs(experiment_names=["kdh/default"], filter_string="tags.`kdh.kind` = 'loop'",
                              output_format="list")[0]
    client = MlflowClient()
    (artifact,) = client.list_artifacts(loop.info.run_id, "logs")
    log = Path(client.download_artifacts(loop.info.run_id, artifact.path)).read_text()
    assert library_lines(log), "the libraries' output (transformers' loading bars, its warnings) is in the run's log"


def test_the_loop_promotes_a_candidate_that_beats_the_base_student_on_its_weakest_domain(looped, capsys):
    code, folder, uri, world, _ = looped
    assert code == 0
    before = Scorecard.load(folder / "out" / "round-1" / "before").domains.set_index(["model", "domain"])["retention"]
    after = Scorecard.load(folder / "out" / "round-1" / "gate").domains.set_index(["model", "domain"])["retention"]
    weakest = before["student"].idxmin()
    assert after[("candidate", weakest)] > before[("student", weakest)]
    mlflow.set_tracking_uri(uri)
    champion = promotion.champion_version("kdh-default")
    candidate = folder / "out" / "round-1" / "distill" / "student"
    assert champion is not None and int(champion.version) == 1
    assert champion.tags["kdh.fingerprint"] == fingerprint(ModelRef("c", str(candidate)))
    assert (folder / "summary.md").read_text().startswith("## ✅")


def test_the_loop_is_one_mlflow_parent_run_with_its_steps_nested(looped):
    _, _, uri, _, _ = looped
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["kdh/default"])
    assert (runs["status"] == "FINISHED").all()
    loop = runs[runs["tags.kdh.kind"] == "loop"]
    assert len(loop) == 1 and loop["tags.kdh.verdict"].iloc[0] == "pass"
    children = runs[runs["tags.mlflow.parentRunId"] == loop["run_id"].iloc[0]]
    assert sorted(children["tags.kdh.kind"]) == ["distill", "eval", "eval", "gate"]  # round 2 stopped after scoring
    tables = [a.path for a in MlflowClient().list_artifacts(loop["run_id"].iloc[0], "tables")]
    assert "tables/before_after.json" in tables


def test_the_champion_alias_works_wherever_a_model_is_named(looped, tmp_path):
    _, folder, uri, world, _ = looped
    code = main(["eval", "--model", f"teacher={world.teacher_dir}", "--model", "champion=models:/kdh-default@champion",
                 "--limit", "4", "--tracking-uri", uri, "--out", str(tmp_path)])
    assert code == 0
    card = Scorecard.load(tmp_path)
    promoted = folder / "out" / "round-1" / "distill" / "student"
    assert card.models["champion"]["fingerprint"] == fingerprint(ModelRef("c", str(promoted)))
    code = main(["distill", "--teacher", str(world.teacher_dir), "--student", "models:/kdh-default@champion",
                 "--steps", "2", "--save-every", "2", "--out", str(tmp_path / "distill"), "--tracking-uri", uri])
    assert code == 0 and (tmp_path / "distill" / "student" / "config.json").is_file()


def test_promotion_needs_a_passing_gate_and_rolls_back(looped, lenient_suite, tmp_path, capsys):
    _, folder, uri, world, _ = looped
    common = ["--suite", str(lenient_suite), "--tracking-uri", uri]
    assert main(["promote", "--rollback", *common]) == 2  # v1 was the first champion
    assert "first champion" in capsys.readouterr().err

    assert main(["promote", "--candidate", str(world.student_dir), *common]) == 1  # never gated
    assert "no passing `kdh gate` run" in capsys.readouterr().err
    assert main(["gate", "--candidate", str(world.student_dir), "--champion", "none", "--teacher",
                 str(world.teacher_dir), "--out", str(tmp_path / "gate"), *common]) == 0
    assert main(["promote", "--candidate", str(world.student_dir), *common]) == 0
    mlflow.set_tracking_uri(uri)
    assert int(promotion.champion_version("kdh-default").version) == 2

    assert main(["promote", "--rollback", *common]) == 0
    assert int(promotion.champion_version("kdh-default").version) == 1
    history = promotion.history("kdh-default")
    assert list(history["version"]) == [2, 1] and list(history["champion"]) == [False, True]


def test_a_loop_over_two_tokenizers_is_bad_input_before_any_scoring(tiny_world, tmp_path, capsys):
    """The loop distils with plain KD, which needs one vocabulary: exit 2 (bad input), as `kdh distill`."""
    code = main(["loop", "--teacher", str(tiny_world.teacher_dir), "--student", str(tiny_world.cross_student_dir),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "tokenizers differ" in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "refused before anything was scored"


def test_bad_input_found_inside_a_loops_distillation_exits_2_and_a_failure_3(tiny_world, tmp_path, monkeypatch):
    """Past the early checks (a champion with another tokenizer, say), the distiller's ValueError is
    still bad input and its DistillError a failure while running: the codes `kdh distill` gives."""
    from distiller import trainer
    from harness import loop, tracking
    from harness.errors import EXIT_BAD_INPUT, EXIT_RUNTIME, KdhError
    from harness.inputs import open_suite

    tracking.connect(f"sqlite:///{tmp_path / 'm.db'}")
    suite = open_suite(None)
    teacher = ModelRef("teacher", str(tiny_world.teacher_dir))
    ratios = {d.name: 1.5 for d in suite.domains}  # as a scorecard's gaps give them
    args = (suite, teacher, str(tiny_world.cross_student_dir), ratios, loop.LoopSettings(steps=2))
    with pytest.raises(KdhError, match="tokenizers differ") as raised:  # the real distiller's check
        loop.distill_round(*args, tmp_path / "distill", 1)
    assert raised.value.exit_code == EXIT_BAD_INPUT

    def diverge(*_, **__):
        raise trainer.DistillError("the loss became nan")

    monkeypatch.setattr(trainer, "distill", diverge)
    with pytest.raises(KdhError, match="nan") as raised:
        loop.distill_round(*args, tmp_path / "distill-2", 1)
    assert raised.value.exit_code == EXIT_RUNTIME
