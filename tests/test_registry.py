"""The suite registry: valid suites load, and every kind of bad suite gets an error naming the
file and the field (exit code 2 from the CLI)."""

from __future__ import annotations

import pytest

from harness.cli import main
from harness.errors import SuiteError
from harness.registry import load_suite

from conftest import MC_ROWS, PPL_ROWS

DATA = {"data/ppl.jsonl": PPL_ROWS, "data/mc.jsonl": MC_ROWS, "data/train.jsonl": PPL_ROWS}

GOOD = """\
name: mini
thresholds: {min_retention: 0.8, max_drop: 0.05, alpha: 0.05}
domains:
  - name: code
    train: data/train.jsonl
    validation: data/train.jsonl
    thresholds: {min_retention: 0.5}
    slices:
      - {name: ppl, task: tasks/perplexity.yaml, data: data/ppl.jsonl, metric: bits_per_byte}
      - {task: tasks/choice.yaml, data: data/mc.jsonl, metric: acc, weight: 2}
  - name: math
    slices:
      - {task: tasks/choice.yaml, data: data/mc.jsonl, metric: acc_norm}
"""


def error_of(path, **kwargs) -> SuiteError:
    with pytest.raises(SuiteError) as caught:
        load_suite(path, **kwargs)
    return caught.value


def test_a_valid_suite_loads_with_paths_resolved_against_the_suite_file(write_suite, tmp_path, monkeypatch):
    write_suite(GOOD, data=DATA)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # lm-eval alone would resolve data against the CWD
    suite = load_suite("../suite.yaml")
    assert [d.name for d in suite.domains] == ["code", "math"]
    code = suite.domain("code")
    assert code.slices[0].data == tmp_path / "data" / "ppl.jsonl"
    assert code.slices[0].higher_is_better is False and code.slices[1].higher_is_better is True
    assert code.slices[1].name == "choice" and code.slices[1].weight == 2.0
    assert code.train == tmp_path / "data" / "train.jsonl"
    # Thresholds: the domain's own value wins, the rest comes from the suite.
    merged = code.thresholds.over(suite.thresholds)
    assert (merged.min_retention, merged.max_drop, merged.alpha) == (0.5, 0.05, 0.05)


def test_suite_fingerprint_changes_with_data_content(write_suite, tmp_path):
    path = write_suite(GOOD, data=DATA)
    before = load_suite(path).fingerprint()
    (tmp_path / "data" / "mc.jsonl").write_text(MC_ROWS.replace("1 + 1", "1 + 2"))
    assert load_suite(path).fingerprint() != before


def test_malformed_yaml_names_line_and_column(write_suite):
    path = write_suite("name: x\ndomains:\n  - name: a\n    slices: [\n")
    err = error_of(path)
    assert str(path) in str(err) and "malformed YAML at line" in str(err) and "column" in str(err)


def test_unknown_key_suggests_the_nearest_valid_key(write_suite):
    path = write_suite(GOOD.replace("    slices:\n      - {name: ppl", "    slicez:\n      - {name: ppl"), data=DATA)
    err = error_of(path)
    assert err.field == "domains[0].slicez" and "did you mean 'slices'" in str(err)


def test_missing_data_file_is_named(write_suite):
    path = write_suite(GOOD.replace("data/ppl.jsonl", "data/nope.jsonl"), data=DATA)
    err = error_of(path)
    assert err.field == "domains[0].slices[0].data" and "nope.jsonl" in str(err)


def test_missing_task_file_is_named(write_suite):
    path = write_suite(GOOD.replace("tasks/perplexity.yaml", "tasks/missing.yaml"), data=DATA)
    assert error_of(path).field == "domains[0].slices[0].task"


@pytest.mark.parametrize("body, field, words", [
    (GOOD.replace("name: math", "name: code"), "domains[1].name", "duplicate domain 'code'"),
    ("name: x\ndomains:\n  - name: a\n    slices: []\n", "domains[0].slices", "has no slices"),
    ("name: x\ndomains: []\n", "domains", "non-empty list"),
    ("name: x\n", "domains", "is required"),
    (GOOD.replace("min_retention: 0.8", "min_retention: 1.5"), "thresholds.min_retention", "out of range"),
    (GOOD.replace("alpha: 0.05", "alpha: 0"), "thresholds.alpha", "out of range"),
    (GOOD.replace("{min_retention: 0.5}", "{min_retention: -0.1}"), "domains[0].thresholds.min_retention", "out of range"),
    (GOOD.replace("metric: acc_norm", "metric: accuracy"), "domains[1].slices[0].metric", "unknown metric"),
    (GOOD.replace("metric: bits_per_byte", "metric: acc"), "domains[0].slices[0].metric", "not produced by perplexity.yaml"),
    (GOOD.replace("weight: 2", "weight: 0"), "domains[0].slices[1].weight", "out of range"),
    (GOOD.replace("name: mini", "name: Mini Suite"), "name", "not a valid name"),
    (GOOD.replace("{name: ppl,", "{name: choice,"), "domains[0].slices[1]", "duplicate slice 'choice'"),
])
def test_invalid_suites_name_the_field(write_suite, body, field, words):
    err = error_of(write_suite(body, data=DATA))
    assert err.field == field, str(err)
    assert words in str(err)


def test_demo_paths_resolve_into_the_demo_world(write_suite, tmp_path):
    world_data = tmp_path / "world"
    (world_data / "code").mkdir(parents=True)
    (world_data / "code" / "test_ppl.jsonl").write_text(PPL_ROWS)
    body = "name: d\ndomains:\n  - name: code\n    slices:\n      - {task: tasks/perplexity.yaml, data: demo://code/test_ppl.jsonl, metric: bits_per_byte}\n"
    calls = []
    suite = load_suite(write_suite(body), demo_data=lambda: calls.append(1) or world_data)
    assert suite.domains[0].slices[0].data == world_data / "code" / "test_ppl.jsonl" and calls


CODE_TASK = """\
output_type: multiple_choice
doc_to_text: !function helpers.text
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list: [{metric: acc}]
"""


def test_task_files_that_run_code_are_refused_unless_allowed(write_suite, tmp_path):
    (tmp_path / "tasks").mkdir(exist_ok=True)
    (tmp_path / "tasks" / "coded.yaml").write_text(CODE_TASK)
    (tmp_path / "tasks" / "helpers.py").write_text("def text(doc):\n    return doc['context']\n")
    body = "name: c\ndomains:\n  - name: a\n    slices:\n      - {task: tasks/coded.yaml, data: data/mc.jsonl, metric: acc}\n"
    path = write_suite(body, data=DATA)
    err = error_of(path)
    assert "runs code" in str(err) and "!function helpers.text" in str(err) and "--allow-code" in str(err)
    allowed = load_suite(path, allow_code=True)
    assert allowed.domains[0].slices[0].template["doc_to_text"]({"context": "hi"}) == "hi"


def test_unsafe_code_and_python_task_classes_are_refused(write_suite, tmp_path):
    (tmp_path / "tasks").mkdir(exist_ok=True)
    (tmp_path / "tasks" / "unsafe.yaml").write_text("include: choice.yaml\nunsafe_code: true\n")
    body = "name: c\ndomains:\n  - name: a\n    slices:\n      - {task: tasks/unsafe.yaml, data: data/mc.jsonl, metric: acc}\n"
    assert "unsafe_code" in str(error_of(write_suite(body, data=DATA)))


def test_cli_validate_exit_codes(write_suite, capsys):
    good = write_suite(GOOD, data=DATA)
    assert main(["suites", "validate", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    bad = write_suite(GOOD.replace("min_retention: 0.8", "min_retention: 2"), name="bad.yaml")
    assert main(["suites", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "thresholds.min_retention" in err


@pytest.mark.slow
def test_unknown_builtin_task_is_named_and_the_builtins_are_indexed_once(write_suite, monkeypatch):
    from lm_eval.tasks import _index

    from harness.registry import check_builtin_tasks, task_manager

    builds, build = [], _index.TaskIndex.build
    monkeypatch.setattr(_index.TaskIndex, "build", staticmethod(lambda *a, **k: builds.append(a) or build(*a, **k)))
    task_manager.cache_clear()
    body = "name: b\ndomains:\n  - name: a\n    slices:\n      - {task: arc_easyy, metric: acc}\n"
    suite = load_suite(write_suite(body))
    with pytest.raises(SuiteError) as caught:
        check_builtin_tasks(suite)
    assert caught.value.field == "domains[0].slices[0].task" and "did you mean 'arc_easy'" in str(caught.value)
    # Each model's scoring and the agreement take the same index: ~12 s once a process, not once each.
    assert task_manager(True) is task_manager(True) and len(builds) == 1
