"""Generation slices: each model's generated text scored against the reference and against the
teacher's generation, per item (pure arithmetic on strings and records).

A generation slice is a local task file with ``output_type: generate_until``
(suites/tasks/generation.yaml). lm-eval generates greedily and reports ``exact_match`` against the
reference; kdh adds, from the generations lm-eval logs per item (the scorecard's ``answer``):

- ``rougeL``: Rouge-L F-measure against the reference (the ``rouge_score`` package, an lm-eval
  dependency: its tokenizer lower-cases and keeps runs of letters and digits, no stemming);
- ``exact_match_vs_teacher`` and ``rougeL_vs_teacher``: the same two measures against the
  reference model's (the teacher's) generation of the same item, so 1.0 for the teacher itself.

Identical texts score 1.0 under Rouge-L too (``rouge_score`` gives 0 when a text has no word, and
a model that writes the teacher's punctuation-only line exactly agrees with it). The teacher's
generations are part of its cached results (harness/cache.py), so a cached teacher still yields
every other model's "vs teacher" figures. docs/generation.md has the details.
"""

from __future__ import annotations

import math
from functools import lru_cache

VS_TEACHER = "_vs_teacher"
# The metrics kdh computes for a generation slice (lm-eval reports exact_match itself).
KDH_METRICS = ("rougeL", "exact_match" + VS_TEACHER, "rougeL" + VS_TEACHER)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 where the texts are equal, as lm-eval's ``exact_match`` with its defaults (no case folding,
    no stripping)."""
    return float(prediction == reference)


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """Rouge-L F-measure (longest common subsequence of words); 1.0 for identical texts."""
    if prediction == reference:
        return 1.0
    return float(_scorer().score(reference, prediction)["rougeL"].fmeasure)


_MEASURES = {"exact_match": exact_match, "rougeL": rouge_l}


def item_scores(answer: str, gold: str, teacher_answer: str | None) -> dict[str, float]:
    """Every generation metric of one item; the "vs teacher" ones NaN without the teacher's answer."""
    scores = {name: measure(answer, gold) for name, measure in _MEASURES.items()}
    for name, measure in _MEASURES.items():
        scores[name + VS_TEACHER] = math.nan if teacher_answer is None else measure(answer, teacher_answer)
    return scores


def is_generation(slice_) -> bool:
    """A slice whose local task file generates text (built-in tasks keep lm-eval's metrics alone)."""
    return slice_.template is not None and slice_.template.get("output_type") == "generate_until"


def computed_here(slice_) -> bool:
    """Whether kdh, not lm-eval, computes the metric the slice counts."""
    return is_generation(slice_) and slice_.metric in KDH_METRICS


def _mean_and_stderr(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / √n, as lm-eval's ``mean_stderr``)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def score_generations(suite, rows: list[dict], samples: list[dict], reference: str) -> tuple[list[dict], list[dict]]:
    """The scorecard's rows and per-item samples with each generation slice's kdh metrics added.

    ``samples`` hold one record per (model, generation slice, item) with the generated ``answer`` and
    the reference ``gold`` (harness/scoring.py); the reference model's answers are what "vs teacher"
    compares with. Rows: one per kdh metric per (model, slice), ``primary`` where the slice counts it.
    Samples: where the slice counts a kdh metric, its per-item value (what the gate's paired test
    resamples). A model without the teacher's answer for an item gets NaN there, which validation
    rejects rather than scoring a different set of items.
    """
    slices = {(d.name, s.name): s for d in suite.domains for s in d.slices if is_generation(s)}
    if not slices:
        return rows, samples
    teacher = {(s["domain"], s["slice"], s["doc_id"]): str(s.get("answer", ""))
               for s in samples if s["model"] == reference and (s["domain"], s["slice"]) in slices}
    per_item: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    out_samples = []
    for sample in samples:
        slice_ = slices.get((sample["domain"], sample["slice"]))
        if slice_ is None:
            out_samples.append(sample)
            continue
        scores = item_scores(str(sample.get("answer", "")), str(sample.get("gold", "")),
                             teacher.get((sample["domain"], sample["slice"], sample["doc_id"])))
        found = per_item.setdefault((sample["model"], sample["domain"], sample["slice"]), {m: [] for m in KDH_METRICS})
        for metric in KDH_METRICS:
            found[metric].append(scores[metric])
        out_samples.append({**sample, "value": scores[slice_.metric], "weight": 1.0} if slice_.metric in KDH_METRICS
                           else sample)
    added: dict[tuple[str, str, str], list[dict]] = {}
    for (model, domain, slice_name), found in per_item.items():
        slice_ = slices[(domain, slice_name)]
        for metric in KDH_METRICS:
            value, stderr = _mean_and_stderr(found[metric])
            added.setdefault((model, domain, slice_name), []).append({
                "model": model, "domain": domain, "slice": slice_name, "metric": metric, "value": value,
                "stderr": stderr, "n": len(found[metric]), "higher_is_better": True,
                "primary": metric == slice_.metric, "weight": slice_.weight})
    return _beside(rows, added), out_samples


def _beside(rows: list[dict], added: dict[tuple[str, str, str], list[dict]]) -> list[dict]:
    """``rows`` with each slice's added rows right after that slice's last row (a slice lm-eval gave
    no row for at the end), so tables keep the suite's order."""
    last = {(r["model"], r["domain"], r["slice"]): i for i, r in enumerate(rows)}
    out = []
    for i, row in enumerate(rows):
        out.append(row)
        key = (row["model"], row["domain"], row["slice"])
        if last[key] == i:
            out += added.pop(key, [])
    return out + [row for extra in added.values() for row in extra]
