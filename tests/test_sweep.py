"""`kdh sweep` (harness/sweep.py): students of several sizes distilled with DDK and gated against the
teacher; the retention-versus-cost frontier and the smallest student that passes, on the console, in
sweep.csv, in MLflow and in the dashboard's Sweep view. A real sweep on the tiny world: two random
students of the base student's family and the teacher itself as the largest "student"."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import streamlit as st

from harness import frontier, home, sweep
from harness.cli import main
from harness.errors import BadInput

pytestmark = pytest.mark.slow


def test_the_frontier_keeps_the_students_no_smaller_one_beats():
    table = pd.DataFrame({"student": ["a", "b", "c", "d", "e"], "parameters": [10, 20, 30, 30, 40],
                          frontier.VALUE: [0.5, 0.4, 0.7, 0.6, math.nan], "passed": [False, False, True, True, False]})
    assert list(frontier.on_frontier(table)) == [True, False, True, False, False]  # b: a is smaller and better
    assert frontier.smallest_passing(table)["student"] == "c"  # of equal sizes, the better one
    assert frontier.smallest_passing(table.assign(passed=False)) is None


def test_the_summary_names_the_smallest_passing_student_or_what_the_largest_fails_on():
    table = pd.DataFrame({"student": ["s", "l"], "parameters": [1_000, 9_000], "size_mb": [0.1, 0.9],
                          frontier.VALUE: [0.7, 0.9], "worst_domain": ["code", "prose"], "worst_retention": [0.5, 0.8],
                          "passed": [False, True], "failing": ["code", ""]})
    assert frontier.summary_line(table).startswith("Smallest student that passes: l (9,000 parameters")
    none = table.assign(passed=False, failing=["code", "prose, code"])
    assert "No student passes the gate. The largest, l (9,000 parameters), fails on prose, code" in frontier.summary_line(none)


@pytest.mark.parametrize("body, says", [
    ("students: []", "expected a list under 'students:'"),
    ("students:\n  - {config: {}}", "entry 1: each entry needs a 'name'"),
    ("students:\n  - {name: a, config: {}}\n  - {name: a, config: {}}", "entry 2: the name 'a' is used twice"),
    ("students:\n  - {name: a, config: {}, path: x}", "entry 1 ('a'): give either 'config'"),
    ("students:\n  - {name: a, size: 3}", "entry 1 ('a'): unknown key(s) size"),
    ("students:\n  - {name: a, path: nowhere}", "nowhere holds no config.json"),
    ("students: [", "not YAML"),
])
def test_a_bad_students_file_is_named_with_its_entry(tmp_path, body, says):
    path = tmp_path / "students.yaml"
    path.write_text(body)
    with pytest.raises(BadInput, match=re.escape(says)) as err:
        sweep.load_students(path)
    assert str(path) in str(err.value)


def test_a_config_key_the_family_lacks_is_bad_input_before_any_training(tiny_world, tmp_path):
    spec = sweep.StudentSpec("odd", {"num_layers": 2})
    with pytest.raises(BadInput, match=r"student 'odd': num_layers not in .*config.json \(LlamaConfig\)"):
        sweep.initial_student(spec, str(tiny_world.student_dir), tmp_path / "init", seed=0)
    assert not (tmp_path / "init").exists()
    students = tmp_path / "students.yaml"
    # 3 query heads cannot share 2 key-value heads: the model is made, its first forward pass fails.
    students.write_text("students:\n  - {name: odd, config: {num_attention_heads: 3, num_key_value_heads: 2, hidden_size: 18}}\n")
    assert main(["sweep", "--students", str(students), "--student", str(tiny_world.student_dir), "--teacher",
                 str(tiny_world.teacher_dir), "--steps", "1", "--out", str(tmp_path / "out"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2


# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swept(tiny_world, tmp_path_factory):
    """A sweep whose outcome does not hang on noise: a suite of the bits-per-byte slices alone with a
    floor of 0.9, two students of random weights (far below it after a few steps) and the teacher."""
    import shutil

    folder = tmp_path_factory.mktemp("sweep")
    shutil.copytree(home.repo_suites_dir() / "tasks", folder / "tasks")
    text = (home.repo_suites_dir() / "default.yaml").read_text().replace("min_retention: 0.6", "min_retention: 0.9")
    suite = folder / "ppl.yaml"
    suite.write_text("\n".join(line for line in text.splitlines() if "tasks/choice.yaml" not in line))
    students = folder / "students.yaml"
    students.write_text("students:\n"
                        "  - {name: w8, config: {hidden_size: 8, intermediate_size: 24}}\n"
                        "  - {name: base, config: {}}\n"
                        f"  - {{name: teacher-copy, path: {tiny_world.teacher_dir}}}\n")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    code = main(["sweep", "--suite", str(suite), "--students", str(students), "--student", str(tiny_world.student_dir),
                 "--teacher", str(tiny_world.teacher_dir), "--steps", "4", "--interval", "2", "--tracking-uri", uri,
                 "--out", str(folder / "out")])
    yield code, folder / "out", uri
    mlflow.set_tracking_uri(home.tracking_uri())


def test_the_sweep_names_the_smallest_student_that_passes(swept, capsys):
    code, out, uri = swept
    assert code == 0
    table = pd.read_csv(out / "sweep.csv").set_index("student")
    assert list(table.index) == ["w8", "base", "teacher-copy"]
    assert table.loc["w8", "parameters"] < table.loc["base", "parameters"] < table.loc["teacher-copy", "parameters"]
    for student, row in table.iterrows():  # each row is what its own gate decided
        verdict = pd.read_csv(out / student / "gate" / "verdict.csv")
        assert bool(row["passed"]) == (verdict["status"] != "fail").all()
        assert (out / student / "distill" / "student" / "config.json").is_file()
    assert list(table["passed"]) == [False, False, True]
    assert table.loc["teacher-copy", frontier.VALUE] > 0.9 > table.loc["base", "worst_retention"]
    assert table["on_frontier"].tolist() == frontier.on_frontier(table.reset_index()).tolist()
    assert table.loc["teacher-copy", "on_frontier"]

    run = mlflow.MlflowClient(uri).search_runs([mlflow.get_experiment_by_name("kdh/default").experiment_id],
                                               "tags.`kdh.kind` = 'sweep'")[0]
    assert run.info.status == "FINISHED" and run.data.tags["kdh.smallest_passing"] == "teacher-copy"
    assert run.data.metrics["sweep/w8/parameters"] == table.loc["w8", "parameters"]
    children = mlflow.MlflowClient(uri).search_runs([run.info.experiment_id],
                                                    f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert sorted(c.data.tags["kdh.kind"] for c in children) == ["distill"] * 3 + ["gate"] * 3


def test_the_sweep_view_plots_the_frontier_and_names_the_smallest_passing_student(swept, monkeypatch):
    import pyarrow as pa
    from streamlit.testing.v1 import AppTest

    _, out, uri = swept
    st.cache_data.clear()
    monkeypatch.setattr(sys, "argv", ["app.py", "--tracking-uri", uri])
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "dashboards" / "app.py"),
                           default_timeout=90).run()
    at.sidebar.radio(key="view").set_value("Sweep").run()
    assert not at.exception, [e.message for e in at.exception]
    assert "Smallest passing student: teacher-copy" in at.success[0].value
    table = pd.read_csv(out / "sweep.csv")
    spec = [e for e in at.get("vega_lite_chart") if json.loads(e.proto.spec)["title"].startswith("Retention versus cost")]
    assert spec, "no frontier chart"
    plotted = pd.concat([pa.ipc.open_stream(d.data.data).read_pandas() for d in spec[0].proto.datasets])
    assert set(plotted["student"]) == set(table["student"])
    shown = next(d.value for d in at.dataframe if "on_frontier" in d.value.columns)
    assert list(shown["student"]) == list(table.sort_values("parameters")["student"])
