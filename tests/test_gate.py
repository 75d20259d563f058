"""The gate's decisions over scorecards (pure: synthetic per-document results, no models).

What a user relies on: a real regression fails with its domain named and a p-value, noise does
not, the champion against itself passes, and anything missing or unpaired fails (never passes).
"""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from harness.gate import DOMAIN_LEVEL, decide, planned_checks
from harness.metrics import from_sums
from harness.registry import load_suite
from harness.report import junit_xml, markdown_summary, verdict_report
from harness.scorecard import ROW_COLUMNS, SAMPLE_COLUMNS, Scorecard

from conftest import MC_ROWS, PPL_ROWS

SUITE = """\
name: mini
thresholds: {min_retention: 0.5, max_drop: 0.02, alpha: 0.05}
domains:
  - name: code
    slices:
      - {name: ppl, task: tasks/perplexity.yaml, data: data/ppl.jsonl, metric: bits_per_byte}
      - {name: mc, task: tasks/choice.yaml, data: data/mc.jsonl, metric: acc, weight: 3}
  - name: math
    thresholds: {min_retention: 0.8}
    slices:
      - {name: mc, task: tasks/choice.yaml, data: data/mc.jsonl, metric: acc, thresholds: {max_drop: 0.5}}
"""


@pytest.fixture
def suite(write_suite):
    return load_suite(write_suite(SUITE, data={"data/ppl.jsonl": PPL_ROWS, "data/mc.jsonl": MC_ROWS}))


def per_doc(model, domain, slice_, metric, values, weights=None):
    weights = np.ones(len(values)) if weights is None else weights
    return [dict(model=model, domain=domain, slice=slice_, metric=metric, doc_id=i, doc_hash=f"{domain}{slice_}{i}",
                 value=float(v), weight=float(w)) for i, (v, w) in enumerate(zip(values, weights))]


def card_of(models: dict[str, dict]) -> Scorecard:
    """A scorecard from per-document results: {model: {(domain, slice, metric): (values, weights)}}."""
    rows, samples = [], []
    for model, slices in models.items():
        for (domain, slice_, metric), (values, weights) in slices.items():
            samples += per_doc(model, domain, slice_, metric, values, weights)
            value = float(from_sums(metric, np.sum(values), np.sum(weights if weights is not None else np.ones(len(values)))))
            rows.append(dict(model=model, domain=domain, slice=slice_, metric=metric, value=value, stderr=math.nan,
                             n=len(values), higher_is_better=metric != "bits_per_byte", primary=True, weight=1.0))
    return Scorecard("mini", "teacher", pd.DataFrame(rows, columns=ROW_COLUMNS), pd.DataFrame(),
                     samples=pd.DataFrame(samples, columns=SAMPLE_COLUMNS))


RNG = np.random.default_rng(7)
N = 200
BYTES = RNG.integers(200, 400, N).astype(float)


def ppl(bits_per_byte):  # per-document log-likelihoods that give this bits per byte, with some spread
    return -BYTES * math.log(2) * bits_per_byte * RNG.uniform(0.9, 1.1, N), BYTES


def acc(p, seed):
    return (np.random.default_rng(seed).random(N) < p).astype(float), None


def models(candidate=None, champion=None):
    teacher = {("code", "ppl", "bits_per_byte"): ppl(1.0), ("code", "mc", "acc"): acc(0.8, 1),
               ("math", "mc", "acc"): acc(0.6, 2)}
    student = {("code", "ppl", "bits_per_byte"): ppl(1.2), ("code", "mc", "acc"): acc(0.7, 3),
               ("math", "mc", "acc"): acc(0.58, 4)}
    return {"teacher": teacher, "candidate": candidate or student, "champion": champion or student}


def status(verdict, domain, slice_, check):
    rows = verdict.rows
    found = rows[(rows["domain"] == domain) & (rows["slice"] == slice_) & (rows["check"] == check)]
    assert len(found) == 1, f"expected one {check} row for {domain}/{slice_}"
    return found.iloc[0]


def test_the_champion_against_itself_passes_every_check(suite):
    verdict = decide(suite, card_of(models()), "candidate", "champion")
    assert verdict.passed, verdict_report(verdict)
    regressions = verdict.rows[verdict.rows["check"] == "regression"]
    assert (regressions["observed"] == 0).all() and (regressions["p_value"] == 1.0).all()
    assert [tuple(r) for r in verdict.rows[["domain", "slice", "check"]].to_numpy()] == planned_checks(suite)


def test_a_significant_drop_fails_with_its_domain_and_p_value(suite):
    damaged = models()["candidate"] | {("code", "ppl", "bits_per_byte"): ppl(1.5)}
    verdict = decide(suite, card_of(models(candidate=damaged)), "candidate", "champion")
    assert not verdict.passed and verdict.failing_domains == ["code"]
    row = status(verdict, "code", "ppl", "regression")
    # retention 1/1.2 → 1/1.5 of the teacher's bits per byte: a drop of about 0.17 points
    assert row["status"] == "fail" and row["observed"] == pytest.approx(1 / 1.2 - 1 / 1.5, abs=0.02)
    assert row["p_value"] < 0.01 and "regression vs champion" in row["reason"]
    assert status(verdict, "math", "mc", "regression")["status"] == "pass"


def test_a_drop_within_noise_is_not_a_regression(suite):
    # The candidate differs from the champion on 10 of 200 items, 7 down and 3 up: a drop over
    # max_drop in points, but a sign test's p is about 0.17.
    values = models()["champion"][("math", "mc", "acc")][0].copy()
    ones, zeros = np.flatnonzero(values == 1), np.flatnonzero(values == 0)
    values[ones[:7]], values[zeros[:3]] = 0, 1
    candidate = models()["candidate"] | {("math", "mc", "acc"): (values, None)}
    verdict = decide(suite, card_of(models(candidate=candidate)), "candidate", "champion")
    row = status(verdict, "math", DOMAIN_LEVEL, "regression")
    assert row["observed"] > 0.02 and row["p_value"] > 0.05 and row["status"] == "pass"
    assert "not significant" in row["reason"]


def test_the_permutation_p_value_matches_the_exact_sign_flip_test(suite):
    """On 12 paired items, all 2^12 swaps can be enumerated: the sampled p must agree."""
    n = 12
    cand = np.array([1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0], float)
    champ = np.array([1, 1, 1, 1, 0, 1, 1, 0, 1, 0, 1, 1], float)
    teacher = np.ones(n)
    card = card_of({"teacher": {("math", "mc", "acc"): (teacher, None)}, "candidate": {("math", "mc", "acc"): (cand, None)},
                    "champion": {("math", "mc", "acc"): (champ, None)}})
    small = load_suite(suite.path).__class__(name="m", path=suite.path, domains=(suite.domain("math"),),
                                            thresholds=suite.thresholds)
    verdict = decide(small, card, "candidate", "champion", permutations=20000)
    observed = (champ.sum() - cand.sum()) / n
    exact = np.mean([((champ - cand) * np.array(signs)).sum() / n >= observed - 1e-12
                     for signs in itertools.product((1, -1), repeat=n)])
    row = status(verdict, "math", "mc", "regression")
    assert row["observed"] == pytest.approx(observed)
    assert row["p_value"] == pytest.approx(exact, abs=0.01)


def test_thresholds_resolve_suite_then_domain_then_slice(suite):
    verdict = decide(suite, card_of(models()), "candidate", "champion")
    assert status(verdict, "code", "ppl", "retention")["threshold"] == 0.5  # the suite's
    assert status(verdict, "math", "mc", "retention")["threshold"] == 0.8  # the domain's
    assert status(verdict, "math", "mc", "regression")["threshold"] == 0.5  # the slice's own max_drop
    assert status(verdict, "math", DOMAIN_LEVEL, "regression")["threshold"] == 0.02


def test_retention_below_the_floor_fails_even_without_a_champion(suite):
    weak = models()["candidate"] | {("math", "mc", "acc"): acc(0.3, 9)}
    verdict = decide(suite, card_of(models(candidate=weak)), "candidate", None)
    assert (verdict.rows.loc[verdict.rows["check"] == "regression", "status"] == "skip").all()
    assert status(verdict, "math", DOMAIN_LEVEL, "retention")["status"] == "fail"
    assert status(verdict, "code", DOMAIN_LEVEL, "retention")["status"] == "pass"
    assert not verdict.passed and verdict.failing_domains == ["math"]


def test_a_domain_missing_from_the_candidate_fails_closed(suite):
    card = card_of(models())
    card.rows = card.rows[~((card.rows["model"] == "candidate") & (card.rows["domain"] == "math"))]
    verdict = decide(suite, card, "candidate", "champion")
    assert not verdict.passed and verdict.failing_domains == ["math"]
    assert "candidate has no result for math/mc" in status(verdict, "math", DOMAIN_LEVEL, "retention")["reason"]
    assert status(verdict, "math", "mc", "regression")["status"] == "fail"


def test_a_nan_fails_closed(suite):
    card = card_of(models())
    card.rows.loc[(card.rows["model"] == "candidate") & (card.rows["domain"] == "code") & (card.rows["slice"] == "mc"),
                  "value"] = math.nan
    verdict = decide(suite, card, "candidate", "champion")
    assert "NaN" in status(verdict, "code", "mc", "retention")["reason"]
    assert status(verdict, "code", DOMAIN_LEVEL, "retention")["status"] == "fail" and not verdict.passed


def test_missing_or_unpaired_documents_fail_the_regression_check(suite):
    card = card_of(models())
    card.samples = card.samples[~((card.samples["model"] == "champion") & (card.samples["domain"] == "code"))]
    verdict = decide(suite, card, "candidate", "champion")
    assert "no per-document results of champion" in status(verdict, "code", "ppl", "regression")["reason"]
    assert status(verdict, "code", DOMAIN_LEVEL, "regression")["status"] == "fail"

    card = card_of(models())
    other = (card.samples["model"] == "champion") & (card.samples["domain"] == "math")
    card.samples.loc[other, "doc_hash"] = "different"
    verdict = decide(suite, card, "candidate", "champion")
    assert "differ" in status(verdict, "math", "mc", "regression")["reason"] and not verdict.passed


def test_reports_name_the_failing_domains(suite):
    damaged = models()["candidate"] | {("code", "ppl", "bits_per_byte"): ppl(1.5)}
    card = card_of(models(candidate=damaged))
    verdict = decide(suite, card, "candidate", "champion")
    root = ET.fromstring(junit_xml(verdict, "mini"))
    cases = root.findall(".//testcase")
    assert len(cases) == len(verdict.rows)
    failed = [c for c in cases if c.find("failure") is not None]
    assert {c.get("classname") for c in failed} == {"kdh.mini.code"}
    assert int(root.find("testsuite").get("failures")) == len(failed) == len(verdict.failures)
    summary = markdown_summary(verdict, "mini", card)
    assert summary.startswith("## ❌") and "`code` ppl **regression**" in summary
    assert "FAILED" in verdict_report(verdict) and "code" in verdict_report(verdict).splitlines()[-1]
