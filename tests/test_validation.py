"""Scorecard validation (real Great Expectations runs): a good scorecard passes; each kind of bad
one fails, with the failed expectation named in words."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harness.errors import ValidationFailed
from harness.registry import load_suite
from harness.scorecard import ROW_COLUMNS, Scorecard
from harness.validation import validate_scorecard

from conftest import MC_ROWS, PPL_ROWS

SUITE = """\
name: v
domains:
  - name: code
    slices:
      - {name: ppl, task: tasks/perplexity.yaml, data: data/ppl.jsonl, metric: bits_per_byte}
  - name: math
    slices:
      - {name: mc, task: tasks/choice.yaml, data: data/mc.jsonl, metric: acc}
"""


@pytest.fixture
def suite(write_suite):
    return load_suite(write_suite(SUITE, data={"data/ppl.jsonl": PPL_ROWS, "data/mc.jsonl": MC_ROWS}))


def card(rows) -> Scorecard:
    return Scorecard("v", "teacher", pd.DataFrame(rows, columns=ROW_COLUMNS), pd.DataFrame(),
                     models={"teacher": {}, "student": {}})


def good_rows():
    rows = []
    for model, bpb, acc in (("teacher", 1.2, 0.8), ("student", 1.9, 0.6)):
        rows.append(dict(model=model, domain="code", slice="ppl", metric="bits_per_byte", value=bpb, stderr=math.nan,
                         n=20, higher_is_better=False, primary=True, weight=1.0))
        rows.append(dict(model=model, domain="code", slice="ppl", metric="word_perplexity", value=30.0,
                         stderr=math.nan, n=20, higher_is_better=False, primary=False, weight=1.0))
        rows.append(dict(model=model, domain="math", slice="mc", metric="acc", value=acc, stderr=0.05,
                         n=20, higher_is_better=True, primary=True, weight=1.0))
    return rows


def failures(suite, rows) -> list[str]:
    with pytest.raises(ValidationFailed) as caught:
        validate_scorecard(card(rows), suite)
    return caught.value.failures


def test_a_good_scorecard_passes(suite):
    result = validate_scorecard(card(good_rows()), suite)
    assert result["success"] is True


def test_a_missing_domain_fails_and_is_named(suite):
    rows = [r for r in good_rows() if not (r["model"] == "student" and r["domain"] == "math")]
    found = failures(suite, rows)
    assert any("missing student/math" in f for f in found)


def test_nan_and_infinite_values_fail(suite):
    rows = good_rows()
    rows[0]["value"] = math.nan
    rows[3]["value"] = math.inf
    found = failures(suite, rows)
    assert any("value must not be missing" in f for f in found)
    assert any('metric=="bits_per_byte"' in f and "inf" in f for f in found)


def test_values_out_of_their_metrics_range_fail(suite):
    rows = good_rows()
    rows[2]["value"] = 1.3  # an accuracy above 1
    found = failures(suite, rows)
    assert any('metric=="acc"' in f and "1.3" in f for f in found)


def test_zero_samples_and_duplicates_fail(suite):
    rows = good_rows()
    rows[2]["n"] = 0
    rows.append(dict(rows[5]))
    found = failures(suite, rows)
    assert any(f.startswith("n must be") for f in found)
    assert any("duplicates" in f for f in found)
