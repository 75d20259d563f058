"""Recommendations: short lines, each derived by a fixed rule from measured numbers and citing them.

Pure: a scorecard, the suite's thresholds and what else was measured (the trend table, the
contamination per slice, the distillation's last DDK weights) in; text out. No rule guesses: a
line appears only when its numbers are there. The rules, in the order they are listed:

1. **below the floor**: a domain's retention < its min_retention. With DDK weights, a domain that
   already had at least an equal share (≥ 1/N) needs more data or a larger student; one that had
   less should be sampled more (start the mixture from the measured gaps).
2. **near the floor**: retention within ``MARGIN`` above min_retention.
3. **falling**: the trend alerts (harness/trends.py).
4. **contaminated**: a slice with ≥ ``CONTAMINATION`` of its test examples in the training corpus.
5. **diverging**: a domain whose top-1 agreement with the teacher is ``AGREEMENT_GAP`` below the
   mean of the student's domains.
6. **over-confident**: the student's calibration error ``CALIBRATION_GAP`` above the teacher's.
"""

from __future__ import annotations

import math

import pandas as pd

MARGIN = 0.05
CONTAMINATION = 0.02
AGREEMENT_GAP = 0.10
CALIBRATION_GAP = 0.05


def _floor(suite, domain: str) -> float:
    th = suite.domain(domain).thresholds.over(suite.thresholds)
    return th.min_retention if th.min_retention is not None else math.nan


def recommendations(scorecard, suite, student: str, trends: pd.DataFrame | None = None,
                    contamination: pd.DataFrame | None = None, ddk_weights: dict[str, float] | None = None) -> list[str]:
    """The lines for ``student`` (see the module docstring for the rules)."""
    lines = []
    domains = scorecard.domains
    domains = domains[domains["model"] == student].sort_values("retention")
    known = {d.name for d in suite.domains}
    for row in domains.itertuples():
        if row.domain not in known or math.isnan(row.retention):
            continue
        floor = _floor(suite, row.domain)
        if math.isnan(floor):
            continue
        if row.retention < floor:
            lines.append(_below(row.domain, row.retention, floor, ddk_weights, len(known)))
        elif row.retention < floor + MARGIN:
            lines.append(f"{row.domain}: retention {row.retention:.2f} is within {MARGIN:.2f} of its floor "
                         f"{floor:.2f} — watch it; the next regression fails the gate")
    if trends is not None:
        lines += [f"{r.domain}: retention falls {-r.per_version:.3f} per version, forecast {r.forecast:.2f} < "
                  f"{r.floor:.2f} within a few versions — distil this domain more before it fails"
                  for r in trends.itertuples() if r.alert]
    if contamination is not None:
        lines += [f"{r.slice}: contamination {r.rate:.0%} ({r.contaminated}/{r.examples} test examples in training "
                  f"domain '{r.domain}') — check the training corpus" for r in contamination.itertuples()
                  if r.rate >= CONTAMINATION]
    return lines + _agreement_lines(scorecard, student)


def _below(domain: str, retention: float, floor: float, weights: dict[str, float] | None, domains: int) -> str:
    head = f"{domain}: retention {retention:.2f} < {floor:.2f}"
    if not weights or domain not in weights:
        return f"{head} — sample it more (kdh distill --gaps-from the scorecard) or give it more training data"
    weight, fair = weights[domain], 1.0 / domains
    if weight >= fair:
        return f"{head} with DDK weight already {weight:.2f} (≥ 1/{domains}) — more {domain} data or a larger student"
    return f"{head} with DDK weight only {weight:.2f} (< 1/{domains}) — more distillation steps, so DDK can shift to it"


def _agreement_lines(scorecard, student: str) -> list[str]:
    agreement = scorecard.agreement_domains
    mine = agreement[agreement["model"] == student].dropna(subset=["top1_agreement"])
    if mine.empty:
        return []
    lines, mean = [], float(mine["top1_agreement"].mean())
    for row in mine.itertuples():
        if row.top1_agreement < mean - AGREEMENT_GAP:
            lines.append(f"{row.domain}: top-1 agreement with the teacher {row.top1_agreement:.2f}, "
                         f"{mean - row.top1_agreement:.2f} below the mean of the domains ({mean:.2f}; KL "
                         f"{row.kl_bits:.2f} bits) — the student imitates the teacher least here")
        if not math.isnan(row.ece) and row.ece > row.reference_ece + CALIBRATION_GAP:
            lines.append(f"{row.domain}: calibration error {row.ece:.3f} vs the teacher's {row.reference_ece:.3f} — "
                         "the student's probabilities are less trustworthy here; recalibrate (temperature) before "
                         "using them")
    return lines
