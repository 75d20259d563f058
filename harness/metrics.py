"""The lm-eval metrics kdh accepts, with their direction and range.

Only metrics registered inside lm-eval are listed, and the three kdh computes itself from a
generation slice's generations: any other name makes lm-eval fall back to `evaluate.load` from the
hub, which fails offline. The range is what validation enforces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    higher_is_better: bool
    low: float
    high: float


_INF = math.inf
METRICS: dict[str, Metric] = {
    "acc": Metric(True, 0.0, 1.0),
    "acc_norm": Metric(True, 0.0, 1.0),
    "acc_bytes": Metric(True, 0.0, 1.0),
    "acc_mutual_info": Metric(True, 0.0, 1.0),
    "acc_all": Metric(True, 0.0, 1.0),
    "exact_match": Metric(True, 0.0, 1.0),
    "f1": Metric(True, 0.0, 1.0),
    "mcc": Metric(True, -1.0, 1.0),
    "brier_score": Metric(False, 0.0, 2.0),
    "bits_per_byte": Metric(False, 0.0, _INF),
    "byte_perplexity": Metric(False, 1.0, _INF),
    "word_perplexity": Metric(False, 1.0, _INF),
    "perplexity": Metric(False, 1.0, _INF),
    "bleu": Metric(True, 0.0, 100.0),
    "chrf": Metric(True, 0.0, 100.0),
    "ter": Metric(False, 0.0, _INF),
    # computed by kdh from a generation slice's logged generations, not by lm-eval (harness/generation.py)
    "rougeL": Metric(True, 0.0, 1.0),
    "exact_match_vs_teacher": Metric(True, 0.0, 1.0),
    "rougeL_vs_teacher": Metric(True, 0.0, 1.0),
}


def metric_range(name: str) -> tuple[float, float]:
    """A metric's valid range; a metric kdh does not know (from a built-in task) may take any
    finite value."""
    known = METRICS.get(name)
    return (known.low, known.high) if known else (-_INF, _INF)


# Per-sample results (what the gate's paired test resamples): lm-eval logs a number per document
# for mean metrics (acc, exact_match, …) and a (log-likelihood, count) pair for the corpus-level
# ones. kdh keeps both as (value, weight), weight 1 for a plain number, so every metric is a
# function of the two sums: the same code aggregates the full set and any resample of it.
_LN2 = math.log(2.0)


def from_sums(metric: str, value_sum, weight_sum):
    """The metric over a set of samples from the sums of their values and weights (numpy-friendly)."""
    import numpy as np

    mean = np.asarray(value_sum, dtype=float) / np.asarray(weight_sum, dtype=float)
    if metric == "bits_per_byte":
        return -mean / _LN2
    if metric in ("byte_perplexity", "word_perplexity"):
        return np.exp(-mean)
    return mean
