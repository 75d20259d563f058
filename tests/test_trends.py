"""Trends and recommendations (harness/trends.py, harness/recommend.py): pure rules on records.
A declining history alerts before it crosses its floor, a flat or noisy one does not; each
recommendation cites the numbers it was derived from."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harness import recommend, trends
from harness.registry import Domain, Slice, Suite, Thresholds
from harness.scorecard import AGREEMENT_COLUMNS, ROW_COLUMNS, Scorecard


def history(values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"version": v + 1, "domain": d, "retention": r} for d, series in values.items()
                         for v, r in enumerate(series)], columns=trends.HISTORY_COLUMNS)


def test_a_declining_domain_alerts_before_it_crosses_and_a_flat_one_does_not():
    floors = {"code": 0.8, "prose": 0.8}
    table = trends.trend_table(history({"code": [0.95, 0.93, 0.90, 0.88, 0.85],
                                        "prose": [0.86, 0.84, 0.87, 0.85, 0.86]}), floors).set_index("domain")
    code, prose = table.loc["code"], table.loc["prose"]
    assert code["latest"] >= 0.8 and code["alert"]  # still passing, yet alerted
    assert code["per_version"] == pytest.approx(-0.025) and code["forecast"] < 0.8
    assert 0 < code["versions_to_floor"] <= trends.HORIZON
    assert not prose["alert"] and prose["forecast"] >= 0.8  # noisy but flat, close to the floor
    assert trends.alerts(table.reset_index()) == [f"code: {code['reason']}"]
    markdown = trends.markdown(table.reset_index())
    assert "⚠️ **code: falls 0.025 per version" in markdown and "prose" in markdown


@pytest.mark.parametrize("series, floor, why", [
    ([0.95, 0.90, 0.85, 0.80, 0.75], 0.8, "already below"),  # crossed: the gate itself fails it
    ([0.99, 0.98, 0.97], 0.5, "beyond"),  # falling, but far from the floor
    ([0.9, 0.8], 0.79, "a forecast needs 3"),  # too few points to fit a line through
])
def test_no_alert_where_the_gate_already_fails_the_floor_is_far_or_points_are_few(series, floor, why):
    row = trends.trend_table(history({"d": series}), {"d": floor}).iloc[0]
    assert not row["alert"] and why in row["reason"]


def test_the_forecast_is_a_least_squares_line_over_the_last_window():
    slope, intercept = trends.linear_fit([1.0, 3.0, 2.0, 4.0])
    assert slope == pytest.approx(0.8) and intercept == pytest.approx(1.3)
    # only the last WINDOW points count: an old cliff does not make a recent plateau alert
    row = trends.trend_table(history({"d": [1.0, 0.2, 0.9, 0.9, 0.9, 0.9, 0.9]}), {"d": 0.85}).iloc[0]
    assert row["per_version"] == pytest.approx(0.0) and not row["alert"]


def _suite() -> Suite:
    slices = (Slice("ppl", "t", "bits_per_byte", False),)
    return Suite("s", path=None, domains=(Domain("code", slices), Domain("prose", slices), Domain("math", slices)),
                 thresholds=Thresholds(min_retention=0.85))


def _card(retention: dict[str, float], agreement: dict[str, tuple[float, float, float]]) -> Scorecard:
    rows = [{"model": m, "domain": d, "slice": "ppl", "metric": "bits_per_byte", "value": 1.0 / (r if m == "student" else 1.0),
             "stderr": math.nan, "n": 10, "higher_is_better": False, "primary": True, "weight": 1.0}
            for d, r in retention.items() for m in ("teacher", "student")]
    agree = [{"model": "student", "domain": d, "slice": "ppl", "method": "token", "documents": 10, "positions": 100,
              "top1_agreement": a, "kl_bits": kl, "js_bits": 0.1, "ece": ece, "reference_ece": 0.02}
             for d, (a, kl, ece) in agreement.items()]
    return Scorecard("s", "teacher", pd.DataFrame(rows, columns=ROW_COLUMNS), pd.DataFrame(),
                     agreement=pd.DataFrame(agree, columns=AGREEMENT_COLUMNS))


def test_recommendations_follow_their_rules_and_cite_their_numbers():
    card = _card({"code": 0.82, "prose": 0.87, "math": 0.95},
                 {"code": (0.60, 0.4, 0.03), "prose": (0.62, 0.3, 0.02), "math": (0.30, 1.2, 0.15)})
    contamination = pd.DataFrame([{"slice": "math/ppl", "domain": "math", "rate": 0.04, "contaminated": 2, "examples": 50}])
    lines = recommend.recommendations(card, _suite(), "student", contamination=contamination,
                                      ddk_weights={"code": 0.61, "prose": 0.2, "math": 0.19})
    assert lines == [
        "code: retention 0.82 < 0.85 with DDK weight already 0.61 (≥ 1/3) — more code data or a larger student",
        "prose: retention 0.87 is within 0.05 of its floor 0.85 — watch it; the next regression fails the gate",
        "math/ppl: contamination 4% (2/50 test examples in training domain 'math') — check the training corpus",
        ("math: top-1 agreement with the teacher 0.30, 0.21 below the mean of the domains (0.51; KL 1.20 bits) — "
         "the student imitates the teacher least here"),
        ("math: calibration error 0.150 vs the teacher's 0.020 — the student's probabilities are less trustworthy "
         "here; recalibrate (temperature) before using them"),
    ]
    # Healthy numbers give no advice at all.
    assert recommend.recommendations(_card({"code": 0.99, "prose": 0.99, "math": 0.99}, {}), _suite(), "student") == []


def test_the_console_report_shows_the_trend_its_alerts_and_the_advice():
    from harness.report import trends_report

    table = trends.trend_table(history({"code": [0.95, 0.93, 0.90, 0.88, 0.85], "prose": [0.9] * 5}),
                               {"code": 0.8, "prose": 0.8})
    text = trends_report(table, ["code: retention 0.85 is within 0.05 of its floor 0.80 — watch it"])
    assert text.startswith("Trends over champion versions")
    assert "⚠ Trend alert · code: falls 0.025 per version" in text and "Trend alert · prose" not in text
    assert text.endswith("Recommendations\n  - code: retention 0.85 is within 0.05 of its floor 0.80 — watch it")
    one_version = trends.trend_table(history({"code": [0.9]}), {"code": 0.8})
    assert trends_report(one_version, []) == ""  # nothing to fit, nothing to advise: nothing printed
