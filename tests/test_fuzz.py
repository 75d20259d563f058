"""Fuzzing (hypothesis): the suite loader and the scorecard reader, given anything, either load or
raise kdh's own clear errors (exit code 2), never a stack trace from deep inside a library; and
the gate, given any scorecard that loads, decides without crashing and never passes on holes."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import KdhError
from harness.gate import decide
from harness.registry import DEFAULT_KEYS, DOMAIN_KEYS, SLICE_KEYS, SUITE_KEYS, THRESHOLD_KEYS, load_suite
from harness.scorecard import ROW_COLUMNS, Scorecard

from conftest import MC_ROWS, PPL_ROWS, TEMPLATES

FUZZ = settings(max_examples=int(os.environ.get("KDH_FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = sorted(SUITE_KEYS | DEFAULT_KEYS | DOMAIN_KEYS | SLICE_KEYS | THRESHOLD_KEYS)

scalars = (st.none() | st.booleans() | st.integers(-5, 1000) | st.floats(allow_nan=True)
           | st.sampled_from(["ppl", "acc", "bits_per_byte", "tasks/choice.yaml", "data/mc.jsonl", "", "x" * 300,
                              "../../etc/passwd", "demo://code/test_ppl.jsonl", "mmlu_nope"])
           | st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=5), max_leaves=20)

GOOD = {
    "name": "fuzz", "thresholds": {"min_retention": 0.5, "max_drop": 0.02, "alpha": 0.05},
    "domains": [{"name": "code", "slices": [
        {"name": "ppl", "task": "tasks/perplexity.yaml", "data": "data/ppl.jsonl", "metric": "bits_per_byte"},
        {"name": "mc", "task": "tasks/choice.yaml", "data": "data/mc.jsonl", "metric": "acc"}]}],
}


def workspace() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="kdh-fuzz-"))
    (folder / "data").mkdir()
    (folder / "data" / "ppl.jsonl").write_text(PPL_ROWS)
    (folder / "data" / "mc.jsonl").write_text(MC_ROWS)
    (folder / "tasks").mkdir()
    for template in TEMPLATES.glob("*.yaml"):
        (folder / "tasks" / template.name).write_text(template.read_text())
    return folder


FOLDER = workspace()


def mutate(document, path: list, value):
    """The document with the node at ``path`` (indices into dicts/lists, taken modulo) replaced."""
    if not path or not isinstance(document, (dict, list)) or not document:
        return value
    keys = list(document) if isinstance(document, dict) else list(range(len(document)))
    key = keys[path[0] % len(keys)]
    copy = dict(document) if isinstance(document, dict) else list(document)
    copy[key] = mutate(document[key], path[1:], value)
    return copy


def loads_or_says_why(text: str):
    path = FOLDER / "suite.yaml"
    path.write_text(text)
    try:
        return load_suite(path)
    except KdhError as err:
        assert str(path) in str(err), f"the error does not name the file: {err}"
        return None


@FUZZ
@given(st.text(max_size=400))
def test_any_text_as_a_suite_loads_or_raises_a_clear_error(text):
    loads_or_says_why(text)


@FUZZ
@given(values)
def test_any_yaml_document_as_a_suite_loads_or_raises_a_clear_error(document):
    loads_or_says_why(yaml.safe_dump(document))


@FUZZ
@given(st.lists(st.integers(0, 50), min_size=1, max_size=5), values)
def test_a_valid_suite_with_one_field_changed_loads_or_raises_a_clear_error(path, value):
    loads_or_says_why(yaml.safe_dump(mutate(GOOD, path, value)))


def scorecard_document():
    rows = []
    for model in ("teacher", "candidate", "champion"):
        for slice_, metric, higher, value in (("ppl", "bits_per_byte", False, 1.5), ("mc", "acc", True, 0.5)):
            rows.append(dict(zip(ROW_COLUMNS, (model, "code", slice_, metric, value, 0.01, 10, higher, True, 1.0))))
    return {"suite": "fuzz", "reference": "teacher", "rows": rows, "efficiency": [], "models": {}}


SAMPLES = "model,domain,slice,metric,doc_id,doc_hash,value,weight\n" + "".join(
    f"{m},code,ppl,bits_per_byte,{i},h{i},-{100 + i},{80 + i}\n{m},code,mc,acc,{i},g{i},{i % 2},1\n"
    for m in ("candidate", "champion") for i in range(5))


def reads_or_says_why(document_text: str, samples_text: str | None):
    folder = Path(tempfile.mkdtemp(prefix="kdh-card-", dir=FOLDER))
    (folder / "scorecard.json").write_text(document_text)
    if samples_text is not None:
        (folder / "samples.csv").write_text(samples_text)
    try:
        card = Scorecard.load(folder)
    except KdhError as err:
        assert "scorecard" in str(err)
        return
    verdict = decide(load_suite(yaml_suite()), card, "candidate", "champion")  # must not crash
    complete = card.rows[card.rows["primary"]].groupby("model").size().to_dict()
    if verdict.passed:  # a pass needs every slice of all three models, finite
        assert complete == {"teacher": 2, "candidate": 2, "champion": 2}
        assert all(math.isfinite(v) for v in card.rows["value"])


def yaml_suite() -> Path:
    path = FOLDER / "gate-suite.yaml"
    if not path.exists():
        path.write_text(yaml.safe_dump(GOOD))
    return path


@FUZZ
@given(st.text(max_size=300), st.none() | st.text(max_size=200))
def test_any_text_as_a_scorecard_reads_or_raises_a_clear_error(text, samples):
    reads_or_says_why(text, samples)


@FUZZ
@given(st.lists(st.integers(0, 50), min_size=1, max_size=5), values, st.none() | st.just(SAMPLES))
def test_a_scorecard_with_one_field_changed_reads_or_raises_and_the_gate_never_passes_on_holes(path, value, samples):
    reads_or_says_why(json.dumps(mutate(scorecard_document(), path, value)), samples)
