"""The gate: does a candidate student pass the suite's thresholds? Pure decisions over a scorecard.

Thresholds resolve suite → domain → slice (``Thresholds.over``). Every slice and every domain gets
two checks:

- **retention**: the candidate keeps at least ``min_retention`` of the teacher's score (a slice's
  retention as in harness/scorecard.py; a domain's is the slice-weighted mean).
- **regression**: against the champion, the candidate's retention drops by at most ``max_drop``
  points; a larger drop counts only when it is significant: a one-sided paired permutation test
  over the documents both models scored (swap the two models' results per document at random,
  recompute the drop; p = the share of swaps with a drop at least as large), ``p < alpha``.
  A domain's drop is the slice-weighted mean, tested with the same swaps in every slice.

It fails closed: a slice missing from the scorecard, a NaN, per-document results that are
missing or do not pair (lm-eval's document hashes differ), a threshold the suite does not set —
each is a failing check with its reason, never a pass. No champion means no regression to test:
those checks are skipped, and said so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.metrics import from_sums
from harness.registry import Suite, Thresholds
from harness.scorecard import Scorecard, slice_retention

VERDICT_COLUMNS = ["domain", "slice", "check", "status", "observed", "threshold", "p_value", "reason"]
CHECKS = ("retention", "regression")
DOMAIN_LEVEL = "(domain)"  # the slice column of a domain's own checks
PERMUTATIONS = 2000
SEED = 0


@dataclass(frozen=True)
class Verdict:
    rows: pd.DataFrame  # VERDICT_COLUMNS; status pass | fail | skip
    candidate: str
    champion: str | None
    teacher: str

    @property
    def passed(self) -> bool:
        """Pass only with checks to show for it and none failing."""
        return bool(len(self.rows)) and not (self.rows["status"] == "fail").any() and (self.rows["status"] == "pass").any()

    @property
    def failures(self) -> pd.DataFrame:
        return self.rows[self.rows["status"] == "fail"]

    @property
    def failing_domains(self) -> list[str]:
        return list(dict.fromkeys(self.failures["domain"]))

    def with_rows(self, rows: pd.DataFrame) -> "Verdict":
        """The verdict with more checks (e.g. contamination_rows)."""
        return Verdict(pd.concat([self.rows, rows], ignore_index=True), self.candidate, self.champion, self.teacher)

    def with_failures(self, domain: str, check: str, reasons: list[str]) -> "Verdict":
        """The verdict with extra failing rows (e.g. a scorecard that failed validation)."""
        extra = pd.DataFrame([_row(domain, DOMAIN_LEVEL, check, "fail", reason=r) for r in reasons], columns=VERDICT_COLUMNS)
        return Verdict(pd.concat([self.rows, extra], ignore_index=True), self.candidate, self.champion, self.teacher)


def mismatch(suite: Suite, card: Scorecard) -> list[str]:
    """How a scorecard made earlier no longer fits the suite (judged on the teacher's rows, which
    cover every slice of the suite it was scored on); empty when it fits."""
    problems = []
    if card.suite != suite.name:
        problems.append(f"it was scored on suite '{card.suite}', not '{suite.name}'")
    teacher = card.rows[card.rows["primary"] & (card.rows["model"] == card.reference)]
    scored = {(r.domain, r.slice, r.metric) for r in teacher.itertuples()}
    wanted = {(d.name, s.name, s.metric) for d in suite.domains for s in d.slices}
    if scored - wanted:
        problems.append("the suite no longer has " + ", ".join(sorted("/".join(k) for k in scored - wanted)))
    if wanted - scored:
        problems.append("it has no teacher result for " + ", ".join(sorted("/".join(k) for k in wanted - scored)))
    return problems


def planned_checks(suite: Suite) -> list[tuple[str, str, str]]:
    """(domain, slice, check) for every check the gate makes on this suite, in verdict order."""
    out = []
    for domain in suite.domains:
        for name in [s.name for s in domain.slices] + [DOMAIN_LEVEL]:
            out += [(domain.name, name, check) for check in CHECKS]
    return out + [(d, s, check) for d, s, check, _ in _agreement_plan(suite)]


# Agreement checks, made only where the suite sets their threshold: (check, threshold, figure, at least?)
AGREEMENT_CHECKS = (("agreement", "min_agreement", "top1_agreement", True), ("kl", "max_kl", "kl_bits", False),
                    ("js", "max_js", "js_bits", False))
_AGREEMENT_WORDS = {"agreement": "top-1 agreement with the teacher", "kl": "KL(teacher ‖ student)",
                    "js": "JS divergence from the teacher"}


def _agreement_plan(suite: Suite) -> list[tuple[str, str, str, float]]:
    """(domain, slice, check, threshold) for each agreement check whose threshold the suite sets."""
    out = []
    for domain in suite.domains:
        domain_th = domain.thresholds.over(suite.thresholds)
        levels = [(s.name, s.thresholds.over(domain_th)) for s in domain.slices] + [(DOMAIN_LEVEL, domain_th)]
        for name, th in levels:
            out += [(domain.name, name, check, getattr(th, key)) for check, key, _, _ in AGREEMENT_CHECKS
                    if getattr(th, key) is not None]
    return out


def agreement_rows(suite: Suite, card: Scorecard, candidate: str) -> list[dict]:
    """The candidate's agreement with the teacher against the suite's min_agreement, max_kl and max_js
    (harness/agreement.py measures it per slice; a domain's figure is weighted by compared positions).
    Fails closed: a threshold with no figure to check is a failing check."""
    slices = card.agreement[card.agreement["model"] == candidate].set_index(["domain", "slice"])
    domains = card.agreement_domains
    domains = domains[domains["model"] == candidate].set_index("domain")
    rows = []
    for domain, name, check, limit in _agreement_plan(suite):
        _, _, figure, at_least = next(c for c in AGREEMENT_CHECKS if c[0] == check)
        found = (domains[figure].get(domain) if name == DOMAIN_LEVEL
                 else slices[figure].get((domain, name)) if len(slices) else None)
        what = f"{domain}/{name}" if name != DOMAIN_LEVEL else domain
        if found is None or math.isnan(found):
            method = slices["method"].get((domain, name), "") if name != DOMAIN_LEVEL and len(slices) else ""
            rows.append(_row(domain, name, check, "fail", threshold=limit,
                             reason=f"no {_AGREEMENT_WORDS[check]} measured for {candidate} on {what}"
                                    + (f" ({method})" if method.startswith("unaligned") else "")))
            continue
        ok = found >= limit if at_least else found <= limit
        unit = "" if check == "agreement" else " bits"
        rows.append(_row(domain, name, check, "pass" if ok else "fail", float(found), limit,
                         reason=f"{_AGREEMENT_WORDS[check]} {found:.3f}{unit}, "
                                f"{('≥' if ok else 'below') if at_least else ('≤' if ok else 'above')} {limit:.3f}"))
    return rows


def _row(domain, slice_name, check, status, observed=math.nan, threshold=math.nan, p_value=math.nan, reason=""):
    return {"domain": domain, "slice": slice_name, "check": check, "status": status, "observed": observed,
            "threshold": threshold, "p_value": p_value, "reason": reason}


@dataclass
class _SliceEvidence:
    """What the checks of one slice need; ``problem`` says why a number is missing."""

    weight: float
    higher_is_better: bool
    metric: str
    teacher: float = math.nan
    candidate: float = math.nan
    champion: float = math.nan
    retention: float = math.nan
    problem: str = ""
    pairs: tuple[np.ndarray, ...] | None = None  # candidate value, weight; champion value, weight
    pair_problem: str = ""


def _value(primary: pd.DataFrame, model: str, domain: str, slice_name: str) -> tuple[float, str]:
    found = primary[(primary["model"] == model) & (primary["domain"] == domain) & (primary["slice"] == slice_name)]
    if found.empty:
        return math.nan, f"{model} has no result for {domain}/{slice_name}"
    value = float(found["value"].iloc[0])
    return value, (f"{model}'s {domain}/{slice_name} is NaN (a failed evaluation)" if math.isnan(value) else "")


def _pairs(samples: pd.DataFrame, candidate: str, champion: str, domain: str, slice_name: str, metric: str):
    """Per-document (value, weight) of both models on the documents both scored, or a reason."""
    mine = samples[(samples["domain"] == domain) & (samples["slice"] == slice_name) & (samples["metric"] == metric)]
    cand = mine[mine["model"] == candidate].set_index("doc_id")
    champ = mine[mine["model"] == champion].set_index("doc_id")
    if cand.empty or champ.empty:
        who = candidate if cand.empty else champion
        return None, f"no per-document results of {who} for {domain}/{slice_name}; a paired test needs them"
    if set(cand.index) != set(champ.index):
        return None, f"{candidate} and {champion} were scored on different documents of {domain}/{slice_name}"
    champ = champ.loc[cand.index]
    if (cand["doc_hash"].astype(str).to_numpy() != champ["doc_hash"].astype(str).to_numpy()).any():
        return None, f"the documents of {domain}/{slice_name} differ between {candidate} and {champion} (hashes)"
    arrays = (cand["value"], cand["weight"], champ["value"], champ["weight"])
    arrays = tuple(np.asarray(a, dtype=float) for a in arrays)
    if not all(np.isfinite(a).all() for a in arrays):
        return None, f"non-finite per-document results in {domain}/{slice_name}"
    return arrays, ""


def _evidence(card: Scorecard, domain, candidate: str, champion: str | None) -> dict[str, _SliceEvidence]:
    primary = card.rows[card.rows["primary"]]
    out = {}
    for slice_ in domain.slices:
        ev = _SliceEvidence(slice_.weight, slice_.higher_is_better, slice_.metric)
        ev.teacher, teacher_problem = _value(primary, card.reference, domain.name, slice_.name)
        ev.candidate, candidate_problem = _value(primary, candidate, domain.name, slice_.name)
        ev.problem = candidate_problem or teacher_problem
        if not ev.problem:
            ev.retention = slice_retention(ev.candidate, ev.teacher, ev.higher_is_better)
            if math.isnan(ev.retention):
                ev.problem = f"retention of {domain.name}/{slice_.name} is undefined (the teacher scores 0)"
        if champion is not None:
            ev.champion, champion_problem = _value(primary, champion, domain.name, slice_.name)
            ev.pairs, ev.pair_problem = _pairs(card.samples, candidate, champion, domain.name, slice_.name, slice_.metric)
            ev.pair_problem = ev.problem or champion_problem or ev.pair_problem
        out[slice_.name] = ev
    return out


def _retentions(ev: _SliceEvidence, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Retention of the teacher's score for sums of per-document values and weights (vectorised)."""
    score = from_sums(ev.metric, values, weights)
    with np.errstate(divide="ignore", invalid="ignore"):
        return score / ev.teacher if ev.higher_is_better else ev.teacher / score


def _drops(ev: _SliceEvidence, swap: np.ndarray) -> tuple[float, np.ndarray]:
    """The observed drop (champion's retention − candidate's) and the drop under each row of swaps."""
    cv, cw, hv, hw = ev.pairs
    observed = float(_retentions(ev, hv.sum(), hw.sum()) - _retentions(ev, cv.sum(), cw.sum()))
    # Swapped documents move their champion result to the candidate and back: sums via the
    # difference, so each permutation costs one matrix-vector product.
    cand_v, cand_w = cv.sum() + swap @ (hv - cv), cw.sum() + swap @ (hw - cw)
    champ_v, champ_w = hv.sum() - swap @ (hv - cv), hw.sum() - swap @ (hw - cw)
    return observed, _retentions(ev, champ_v, champ_w) - _retentions(ev, cand_v, cand_w)


def _p_value(observed: float, permuted: np.ndarray) -> float:
    # +1 on both sides: the identity permutation is one of them, and p is never 0.
    return float((1 + np.sum(permuted >= observed - 1e-12)) / (1 + len(permuted)))


def _regression_row(domain, slice_name, drop, permuted, th: Thresholds, champion, problem=""):
    if problem:
        return _row(domain, slice_name, "regression", "fail", reason=problem)
    if th.max_drop is None or th.alpha is None:
        return _row(domain, slice_name, "regression", "fail", drop,
                    reason="the suite sets no max_drop/alpha for this check; set them under `thresholds:`")
    p = _p_value(drop, permuted)
    if drop <= th.max_drop:
        return _row(domain, slice_name, "regression", "pass", drop, th.max_drop, p,
                    f"drop {drop:+.3f} vs {champion} within {th.max_drop:.3f}")
    if p >= th.alpha:
        return _row(domain, slice_name, "regression", "pass", drop, th.max_drop, p,
                    f"drop {drop:+.3f} vs {champion} over {th.max_drop:.3f} but not significant (p={p:.3f} ≥ {th.alpha})")
    return _row(domain, slice_name, "regression", "fail", drop, th.max_drop, p,
                f"regression vs {champion}: retention drops {drop:.3f} > {th.max_drop:.3f}, p={p:.4f} < {th.alpha}")


def _retention_row(domain, slice_name, retention, th: Thresholds, problem=""):
    if problem:
        return _row(domain, slice_name, "retention", "fail", reason=problem)
    if th.min_retention is None:
        return _row(domain, slice_name, "retention", "fail", retention,
                    reason="the suite sets no min_retention for this check; set it under `thresholds:`")
    ok = retention >= th.min_retention
    return _row(domain, slice_name, "retention", "pass" if ok else "fail", retention, th.min_retention,
                reason=f"keeps {retention:.3f} of the teacher's score, {'≥' if ok else 'below'} {th.min_retention:.3f}")


def decide(suite: Suite, card: Scorecard, candidate: str = "candidate", champion: str | None = None,
           permutations: int = PERMUTATIONS, seed: int = SEED) -> Verdict:
    """The verdict on ``candidate`` against the scorecard's reference (the teacher) and ``champion``."""
    rng = np.random.default_rng(seed)
    rows = []
    for domain in suite.domains:
        domain_th = domain.thresholds.over(suite.thresholds)
        evidence = _evidence(card, domain, candidate, champion)
        domain_drop, domain_permuted, pair_problems = 0.0, np.zeros(permutations), []
        for slice_ in domain.slices:
            ev, th = evidence[slice_.name], slice_.thresholds.over(domain_th)
            rows.append(_retention_row(domain.name, slice_.name, ev.retention, th, ev.problem))
            if champion is None:
                rows.append(_row(domain.name, slice_.name, "regression", "skip", reason="no champion to compare with"))
                continue
            if ev.pair_problem:
                pair_problems.append(ev.pair_problem)
                rows.append(_regression_row(domain.name, slice_.name, math.nan, None, th, champion, ev.pair_problem))
                continue
            swap = (rng.random((permutations, len(ev.pairs[0]))) < 0.5).astype(float)
            drop, permuted = _drops(ev, swap)
            rows.append(_regression_row(domain.name, slice_.name, drop, permuted, th, champion))
            domain_drop += ev.weight * drop
            domain_permuted += ev.weight * permuted

        total = sum(ev.weight for ev in evidence.values())
        problems = [ev.problem for ev in evidence.values() if ev.problem]
        retention = sum(ev.weight * ev.retention for ev in evidence.values()) / total
        rows.append(_retention_row(domain.name, DOMAIN_LEVEL, retention, domain_th, "; ".join(problems)))
        if champion is None:
            rows.append(_row(domain.name, DOMAIN_LEVEL, "regression", "skip", reason="no champion to compare with"))
        else:
            rows.append(_regression_row(domain.name, DOMAIN_LEVEL, domain_drop / total, domain_permuted / total,
                                        domain_th, champion, "; ".join(pair_problems)))

    rows += agreement_rows(suite, card, candidate)
    known = {d.name for d in suite.domains}
    for extra in sorted(set(card.rows["domain"]) - known):  # a scorecard of another suite
        rows.append(_row(extra, DOMAIN_LEVEL, "retention", "fail", reason=f"domain '{extra}' is not in suite '{suite.name}'"))
    return Verdict(pd.DataFrame(rows, columns=VERDICT_COLUMNS), candidate, champion, card.reference)


def contamination_rows(suite: Suite, worst: pd.DataFrame) -> pd.DataFrame:
    """One ``contamination`` check per test slice: the share of its examples whose n-grams the
    training corpus holds (in the training domain that holds most, ``worst``: one row per
    "domain/slice", as harness/corpora.worst_per_slice gives), against the suite's
    ``max_contamination``. A slice with no local data, or no threshold, is skipped and says why."""
    found = {row.slice: row for row in worst.itertuples()}
    rows = []
    for domain in suite.domains:
        domain_th = domain.thresholds.over(suite.thresholds)
        for slice_ in domain.slices:
            limit = slice_.thresholds.over(domain_th).max_contamination
            hit = found.get(f"{domain.name}/{slice_.name}")
            if hit is None:
                rows.append(_row(domain.name, slice_.name, "contamination", "skip", reason="no local test data to compare"))
            elif limit is None:
                rows.append(_row(domain.name, slice_.name, "contamination", "skip", hit.rate,
                                 reason="the suite sets no max_contamination; set it under `thresholds:`"))
            else:
                ok = hit.rate <= limit
                rows.append(_row(domain.name, slice_.name, "contamination", "pass" if ok else "fail", hit.rate, limit,
                                 reason=f"{hit.contaminated}/{hit.examples} test examples have ≥ {hit.min_share:.0%} of "
                                        f"their {hit.ngram}-grams in training domain '{hit.domain}' ({hit.rate:.1%}), "
                                        f"{'≤' if ok else 'above'} {limit:.1%}"))
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)
