"""`kdh gate` and the pytest plugin end to end on the tiny demo world: real lm-eval scoring, the
result cache, real MLflow. What CI relies on: a damaged candidate exits 1 with the failing domains
in the console, the JUnit file and the summary; the champion against itself passes; an unchanged
teacher is not scored twice; the plugin's tests fail exactly where the gate's checks do."""

from __future__ import annotations

import re

import json
import shutil
import xml.etree.ElementTree as ET

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from harness import cache, scoring
from harness.cli import main
from harness.scorecard import Scorecard

pytestmark = pytest.mark.slow  # each test scores models end to end


@pytest.fixture(scope="module")
def world(tiny_world):
    return tiny_world


@pytest.fixture(scope="module")
def damaged(world, tmp_path_factory):
    """The student with Gaussian noise added to every weight matrix."""
    folder = tmp_path_factory.mktemp("damaged") / "student"
    shutil.copytree(world.student_dir, folder)
    weights = next(folder.glob("*.safetensors"))
    tensors, noise = load_file(weights), torch.Generator().manual_seed(0)
    tensors = {k: v + 0.2 * torch.randn(v.shape, generator=noise) if v.ndim == 2 else v for k, v in tensors.items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    return folder


def gate(suite, world, candidate, champion, out, *extra):
    return main(["gate", "--suite", str(suite), "--teacher", str(world.teacher_dir), "--candidate", str(candidate),
                 "--champion", str(champion), "--out", str(out), "--junit", str(out / "junit.xml"),
                 "--summary", str(out / "summary.md"), *extra])


@pytest.fixture(scope="module")
def rejected(lenient_suite, world, damaged, tmp_path_factory):
    out = tmp_path_factory.mktemp("rejected")
    return gate(lenient_suite, world, damaged, world.student_dir, out), out


def test_a_damaged_candidate_is_rejected_with_its_domains_named(rejected, capsys):
    code, out = rejected
    assert code == 1
    verdict = pd.read_csv(out / "verdict.csv")
    failing = sorted(set(verdict.loc[verdict["status"] == "fail", "domain"]))
    assert failing and set(verdict.loc[verdict["status"] == "fail", "check"]) == {"regression"}
    cases = ET.parse(out / "junit.xml").findall(".//testcase")
    assert sorted({c.get("classname").rsplit(".", 1)[1] for c in cases if c.find("failure") is not None}) == failing
    summary = (out / "summary.md").read_text()
    assert summary.startswith("## ❌") and all(f"`{d}`" in summary for d in failing)
    card = Scorecard.load(out)
    assert card.model_names == ["teacher", "candidate", "champion"] and len(card.samples) > 0


def test_the_champion_against_itself_passes(lenient_suite, world, tmp_path, capsys):
    code = gate(lenient_suite, world, world.student_dir, world.student_dir, tmp_path)
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "PASSED" in printed
    assert ET.parse(tmp_path / "junit.xml").find(".//testsuite").get("failures") == "0"
    assert (tmp_path / "summary.md").read_text().startswith("## ✅")

    # The same scorecard under a floor of 0.99: the recommendations the summary holds are on the console too.
    strict = tmp_path / "suite" / "strict.yaml"
    shutil.copytree(lenient_suite.parent / "tasks", strict.parent / "tasks")
    strict.write_text(lenient_suite.read_text().replace("min_retention: 0.1", "min_retention: 0.99"))
    out = tmp_path / "strict"
    assert main(["gate", "--suite", str(strict), "--scorecard", str(tmp_path), "--out", str(out),
                 "--summary", str(out / "summary.md")]) == 1
    printed, summary = capsys.readouterr().out, (out / "summary.md").read_text()
    advice = re.findall(r"^- (.+)$", summary.split("### Recommendations", 1)[1], re.M)
    assert any(re.match(r"records: retention 0\.\d\d < 0\.99", line) for line in advice), advice
    assert "Recommendations" in printed and all(f"  - {line}" in printed for line in advice)
    assert printed.count("Trend alert") == summary.count("⚠️ **")


def test_a_second_gate_does_not_score_the_teacher_again(lenient_suite, world, damaged, tmp_path, monkeypatch):
    scored = []
    real = scoring.evaluate_model

    def counting(ref, *args, **kwargs):
        scored.append(ref.name)
        return real(ref, *args, **kwargs)

    monkeypatch.setattr(scoring, "evaluate_model", counting)
    monkeypatch.setattr(cache, "folder", lambda: tmp_path / "cache")  # this test starts from an empty cache
    gate(lenient_suite, world, world.student_dir, "none", tmp_path / "first")
    assert scored == ["teacher", "candidate"]
    scored.clear()
    gate(lenient_suite, world, damaged, world.student_dir, tmp_path / "second")
    assert scored == ["candidate"]  # the teacher and the (unchanged) champion come from the cache
    card = Scorecard.load(tmp_path / "second")
    assert card.models["teacher"]["cached"] and card.models["champion"]["cached"]
    assert not card.models["candidate"]["cached"]
    first = Scorecard.load(tmp_path / "first")
    teacher = lambda c: c.rows[c.rows["model"] == "teacher"].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(teacher(first), teacher(card))


def test_a_candidate_with_a_domain_missing_from_its_scorecard_fails(rejected, lenient_suite, tmp_path, capsys):
    _, out = rejected
    card = Scorecard.load(out)
    drop = lambda f: f[~((f["model"] == "candidate") & (f["domain"] == "records"))]  # noqa: E731
    card.rows, card.samples = drop(card.rows), drop(card.samples)
    card.save(tmp_path / "card")
    code = main(["gate", "--suite", str(lenient_suite), "--scorecard", str(tmp_path / "card" / "scorecard.json"),
                 "--out", str(tmp_path / "out"), "--junit", str(tmp_path / "junit.xml")])
    assert code == 1
    assert "candidate has no result for records" in capsys.readouterr().out
    failed = [c for c in ET.parse(tmp_path / "junit.xml").findall(".//testcase") if c.find("failure") is not None]
    assert any(c.get("classname") == "kdh.default.records" for c in failed)


def test_a_candidate_that_cannot_be_scored_is_bad_input_and_ci_still_gets_a_report(lenient_suite, world, tmp_path):
    code = gate(lenient_suite, world, tmp_path / "no-such-model", "none", tmp_path)
    assert code == 2
    failure = ET.parse(tmp_path / "junit.xml").find(".//failure")
    assert failure is not None and "no-such-model" in failure.get("message")


def test_the_pytest_plugin_fails_where_the_gate_does(rejected, lenient_suite, world, damaged, pytester):
    _, out = rejected
    verdict = pd.read_csv(out / "verdict.csv", keep_default_na=False)
    args = ["--kdh-suite", str(lenient_suite), "--kdh-teacher", str(world.teacher_dir),
            "--kdh-candidate", str(damaged), "--kdh-champion", str(world.student_dir), "-p", "no:cacheprovider"]
    result = pytester.runpytest_inprocess(*args, "--junitxml", "plugin.xml")
    outcomes = result.parseoutcomes()
    expected_failures = sorted(f"{r.domain}/{r.slice}/{r.check}" for r in verdict.itertuples() if r.status == "fail")
    assert outcomes.get("failed") == len(expected_failures) and outcomes.get("passed") == len(verdict) - len(expected_failures) + 1
    cases = ET.parse(pytester.path / "plugin.xml").findall(".//testcase")
    assert sorted(c.get("name") for c in cases if c.find("failure") is not None) == expected_failures
    for case in cases:  # the same reason as the gate's row
        failure = case.find("failure")
        if failure is not None:
            domain, slice_, check = case.get("name").split("/")
            row = verdict[(verdict["domain"] == domain) & (verdict["slice"] == slice_) & (verdict["check"] == check)]
            assert row["reason"].iloc[0] in failure.get("message")

    selected = pytester.runpytest_inprocess(*args, "-k", "records", "--collect-only", "-q")
    names = [line for line in selected.outlines if "::" in line]
    assert names and all("records/" in line for line in names)
    assert json.dumps(names).count("records/") == 6  # two slices and the domain, two checks each


def test_a_scorecard_from_before_the_suite_changed_is_bad_input(rejected, lenient_suite, tmp_path, capsys):
    _, out = rejected
    changed = tmp_path / "default.yaml"  # the suite, one slice renamed since the scorecard was made
    shutil.copytree(lenient_suite.parent / "tasks", tmp_path / "tasks")
    changed.write_text(lenient_suite.read_text().replace("name: field,", "name: field-v2,"))
    code = main(["gate", "--suite", str(changed), "--scorecard", str(out / "scorecard.json"), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "does not match" in err and "records/field/acc" in err and "records/field-v2/acc" in err
