"""Scorecard arithmetic: retention in both metric directions, weights, and the saved files."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harness.scorecard import ROW_COLUMNS, SAMPLE_COLUMNS, Scorecard, domain_aggregates, side_by_side, slice_retention


def row(model, domain, slice_, metric, value, higher, weight=1.0, primary=True):
    return dict(model=model, domain=domain, slice=slice_, metric=metric, value=value, stderr=math.nan,
                n=10, higher_is_better=higher, primary=primary, weight=weight)


ROWS = pd.DataFrame([
    row("teacher", "code", "ppl", "bits_per_byte", 1.0, False),
    row("teacher", "code", "mc", "acc", 0.8, True, weight=3.0),
    row("teacher", "code", "ppl", "byte_perplexity", 2.0, False, primary=False),
    row("teacher", "math", "mc", "acc", 0.5, True),
    row("student", "code", "ppl", "bits_per_byte", 2.0, False),
    row("student", "code", "mc", "acc", 0.4, True, weight=3.0),
    row("student", "code", "ppl", "byte_perplexity", 4.0, False, primary=False),
    row("student", "math", "mc", "acc", 0.5, True),
], columns=ROW_COLUMNS)


def test_slice_retention_in_both_directions():
    assert slice_retention(0.4, 0.8, higher_is_better=True) == pytest.approx(0.5)
    assert slice_retention(2.0, 1.0, higher_is_better=False) == pytest.approx(0.5)  # twice the bits: half kept
    assert slice_retention(0.9, 0.8, higher_is_better=True) > 1.0
    assert math.isnan(slice_retention(0.5, 0.0, higher_is_better=True))
    assert math.isnan(slice_retention(math.nan, 1.0, higher_is_better=False))


def test_domain_retention_is_the_weighted_mean_of_primary_slices():
    agg = domain_aggregates(ROWS, reference="teacher").set_index(["model", "domain"])
    # code: ppl 1/2 = 0.5 (weight 1), mc 0.4/0.8 = 0.5 (weight 3) → 0.5; the non-primary row is ignored.
    assert agg.loc[("student", "code"), "retention"] == pytest.approx(0.5)
    assert agg.loc[("student", "code"), "gap"] == pytest.approx(0.5)
    assert agg.loc[("student", "math"), "retention"] == pytest.approx(1.0)
    assert (agg.loc["teacher", "retention"] == 1.0).all()


def test_weights_change_the_domain_retention():
    rows = ROWS.copy()
    rows.loc[(rows["model"] == "student") & (rows["slice"] == "mc") & (rows["domain"] == "code"), "value"] = 0.8
    agg = domain_aggregates(rows, reference="teacher").set_index(["model", "domain"])
    assert agg.loc[("student", "code"), "retention"] == pytest.approx((0.5 * 1 + 1.0 * 3) / 4)


def test_side_by_side_shows_one_column_per_model_and_the_direction():
    table = side_by_side(ROWS, ["teacher", "student"])
    assert list(table.columns) == ["domain", "slice", "metric", "better", "teacher", "student"]
    assert table.set_index(["domain", "slice"]).loc[("code", "ppl"), "better"] == "lower"
    assert len(table) == 3


def test_save_and_load_round_trip(tmp_path):
    eff = pd.DataFrame([{"model": "teacher", "parameters": 10, "bytes_on_disk": 40, "tokens_per_s": 1.0,
                         "peak_memory_mb": 1.0, "seconds": 1.0}])
    samples = pd.DataFrame([["teacher", "code", "ppl", "bits_per_byte", 0, "00ab", -812.5, 300.0],
                            ["teacher", "code", "mc", "acc", 1, "", 1.0, 1.0]], columns=SAMPLE_COLUMNS)
    card = Scorecard("s", "teacher", ROWS, eff, models={"teacher": {"fingerprint": "abc"}}, suite_fingerprint="f",
                     samples=samples)
    paths = card.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"scorecard.csv", "domains.csv", "efficiency.csv", "samples.csv",
                                                    "scorecard.json"}
    back = Scorecard.load(paths["scorecard.json"])
    pd.testing.assert_frame_equal(back.rows, ROWS, check_dtype=False)
    pd.testing.assert_frame_equal(back.samples, samples, check_dtype=False)  # hashes stay strings ("00ab", "")
    assert back.models == card.models and back.reference == "teacher"
    assert pd.read_csv(paths["domains.csv"])["retention"].tolist() == pytest.approx(card.domains["retention"].tolist())
