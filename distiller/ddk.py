"""DDK domain weights: Eq. 1 (discrepancy factor), Eq. 2 (smooth update), the mixtures, gap sources.

Paper: Liu et al., "DDK: Distilling Domain Knowledge for Efficient Large Language Models",
NeurIPS 2024 (arXiv 2407.16154), §3.2–3.3; notes in reference/ddk.md §1.

Per domain i the student/teacher validation perplexity ratio x[i] = ℓ_S[i] / ℓ_T[i] is the only
input the maths needs, so the core works on ratios; the paper-shaped functions take the two
perplexity vectors and divide.

    Eq. 1   r = softmax(x)                                     (no temperature)
    Eq. 2   ψ = r_prev · exp(x);  r_next = α·ψ/Σψ + (1−α)/N    (α = 0.5: every domain keeps ≥ (1−α)/N)

The paper's baselines are settings of one ``Mixture``, not copies of the loop: "ddk",
"ddk-no-smoothing" (Eq. 1 recomputed each interval), "uniform" (equal sampling), "natural"
(proportional to domain size, as CPT/KD), "fixed" (weights given by hand).

Pure functions in the core; the gap sources at the bottom read a harness scorecard or MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ALPHA = 0.5  # the paper's smoothing coefficient, fixed in all its experiments
MIXTURES = ("ddk", "ddk-no-smoothing", "uniform", "natural", "fixed")
RATIO = "perplexity ratio ℓ_S/ℓ_T"


# --- the maths, on ratios ---------------------------------------------------------------------

def _positive(values: Sequence[float], what: str) -> list[float]:
    """Finite and > 0 (perplexities and their ratios are): ValueError otherwise."""
    out = [float(v) for v in values]
    if not out or any(not (math.isfinite(v) and v > 0) for v in out):
        raise ValueError(f"{what} must be finite and > 0 (at least one domain), got {out}")
    return out


def discrepancy_from_ratios(ratios: Sequence[float]) -> list[float]:
    """Eq. 1 on the ratios ℓ_S/ℓ_T: their softmax. Subtracting the max before exp changes nothing
    (softmax is shift-invariant) and keeps exp from overflowing on large ratios."""
    x = _positive(ratios, "perplexity ratios")
    top = max(x)
    e = [math.exp(v - top) for v in x]
    total = sum(e)
    return [v / total for v in e]


def smooth_update_from_ratios(r_prev: Sequence[float], ratios: Sequence[float], alpha: float = ALPHA) -> list[float]:
    """Eq. 2 on the ratios. ψ is built in log space, log ψ = log r_prev + x, and shifted by its
    max before exp: the normalisation ψ/Σψ cancels the shift, and the largest term is exactly 1,
    so Σψ can neither overflow nor underflow to 0 (a domain with r_prev = 0 just gets the floor)."""
    x = _positive(ratios, "perplexity ratios")
    prev = [float(v) for v in r_prev]
    if len(prev) != len(x):
        raise ValueError(f"r_prev has {len(prev)} domains but there are {len(x)} ratios")
    if any(not (math.isfinite(v) and v >= 0) for v in prev) or sum(prev) <= 0:
        raise ValueError(f"r_prev must be finite, >= 0 and not all 0, got {prev}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    log_psi = [math.log(p) + v if p > 0 else -math.inf for p, v in zip(prev, x)]
    top = max(log_psi)
    psi = [math.exp(v - top) for v in log_psi]
    total, floor = sum(psi), (1.0 - alpha) / len(x)
    return [alpha * p / total + floor for p in psi]


def _ratio_vector(ppl_student: Sequence[float], ppl_teacher: Sequence[float]) -> list[float]:
    s, t = _positive(ppl_student, "student perplexities"), _positive(ppl_teacher, "teacher perplexities")
    if len(s) != len(t):
        raise ValueError(f"{len(s)} student perplexities but {len(t)} teacher perplexities")
    return [a / b for a, b in zip(s, t)]


# --- the paper's signatures --------------------------------------------------------------------

def discrepancy_factor(ppl_student: Sequence[float], ppl_teacher: Sequence[float]) -> list[float]:
    """Eq. 1: r = softmax(ℓ_S / ℓ_T) over domains."""
    return discrepancy_from_ratios(_ratio_vector(ppl_student, ppl_teacher))


def smooth_update(r_prev: Sequence[float], ppl_student: Sequence[float], ppl_teacher: Sequence[float],
                  alpha: float = ALPHA) -> list[float]:
    """Eq. 2: ψ = r_prev · exp(ℓ_S/ℓ_T); r_next = α·ψ/Σψ + (1−α)/N."""
    return smooth_update_from_ratios(r_prev, _ratio_vector(ppl_student, ppl_teacher), alpha)


# --- mixtures: how the sampling weights start and change every K steps ------------------------

def _normalised(weights: Mapping[str, float], domains: Sequence[str], what: str) -> dict[str, float]:
    """The weights over exactly ``domains``, scaled to sum to 1; ValueError saying what is wrong."""
    missing = [d for d in domains if d not in weights]
    unknown = [d for d in weights if d not in domains]
    if missing or unknown:
        problems = [f"missing domains {missing}"] * bool(missing) + [f"unknown domains {unknown}"] * bool(unknown)
        raise ValueError(f"{what}: {'; '.join(problems)} (the domains are {list(domains)})")
    values = {d: float(weights[d]) for d in domains}
    if any(not (math.isfinite(v) and v >= 0) for v in values.values()) or sum(values.values()) <= 0:
        raise ValueError(f"{what}: weights must be finite, >= 0 and sum to more than 0, got {values}")
    total = sum(values.values())
    return {d: v / total for d, v in values.items()}


@dataclass
class Mixture:
    """How the domain sampling weights start and change every K steps (the paper's baselines are
    settings of this, not copies)."""

    kind: str  # one of MIXTURES
    domains: tuple[str, ...]
    fixed: dict[str, float] | None = None  # for kind "fixed" (normalised on construction)
    natural: dict[str, float] | None = None  # domain sizes (e.g. train tokens) for "natural"
    alpha: float = ALPHA

    def __post_init__(self):
        self.domains = tuple(self.domains)
        if self.kind not in MIXTURES:
            raise ValueError(f"unknown mixture kind {self.kind!r}; allowed: {', '.join(MIXTURES)}")
        if not self.domains or len(set(self.domains)) != len(self.domains):
            raise ValueError(f"mixture domains must be non-empty and distinct, got {list(self.domains)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.kind == "fixed":
            if self.fixed is None:
                raise ValueError("a fixed mixture needs its weights, e.g. fixed:code=0.4,prose=0.6")
            self.fixed = _normalised(self.fixed, self.domains, "fixed weights")
        if self.kind == "natural":
            if self.natural is None:
                raise ValueError("a natural mixture needs the domain sizes (e.g. train tokens per domain)")
            self.natural = {d: float(self.natural[d]) for d in self.natural}
            _normalised(self.natural, self.domains, "natural sizes")

    @classmethod
    def parse(cls, spec: str, domains: Sequence[str], natural_sizes: Mapping[str, float] | None = None) -> "Mixture":
        """ "ddk" | "ddk-no-smoothing" | "uniform" | "natural" | "fixed:code=0.4,prose=0.3,…"
        (fixed weights are normalised, so "fixed:code=2,prose=1" is 2/3 and 1/3)."""
        allowed = f"allowed: {', '.join(MIXTURES[:-1])}, or fixed:<domain>=<weight>,… over {list(domains)}"
        kind, _, rest = spec.strip().partition(":")
        kind = kind.strip()
        fixed = None
        try:
            if kind not in MIXTURES:
                raise ValueError(f"unknown mixture kind {kind!r}")
            if rest and kind != "fixed":
                raise ValueError(f"{kind!r} takes no arguments")
            if kind == "fixed":
                fixed = {}
                for item in filter(None, (p.strip() for p in rest.split(","))):
                    name, eq, value = item.partition("=")
                    if not eq or name.strip() in fixed:
                        raise ValueError(f"bad or repeated entry {item!r}")
                    try:
                        fixed[name.strip()] = float(value)
                    except ValueError:
                        raise ValueError(f"weight {value.strip()!r} of {name.strip()!r} is not a number") from None
            return cls(kind, tuple(domains), fixed=fixed,
                       natural=dict(natural_sizes) if natural_sizes is not None else None)
        except ValueError as err:
            raise ValueError(f"mixture {spec!r}: {err}; {allowed}") from None

    @property
    def adaptive(self) -> bool:
        """Whether update() depends on the ratios (otherwise the trainer can skip student evaluation)."""
        return self.kind in ("ddk", "ddk-no-smoothing")

    def _in_order(self, values: Mapping[str, float] | None, what: str) -> list[float]:
        """``values`` in domain order; values for other domains are ignored (not ours to sample)."""
        if values is None:
            raise ValueError(f"mixture {self.kind!r} needs the {what} per domain")
        missing = [d for d in self.domains if d not in values]
        if missing:
            raise ValueError(f"no {what} for domains {missing} (got {sorted(values)})")
        return [values[d] for d in self.domains]

    def initial(self, ratios: Mapping[str, float] | None = None) -> dict[str, float]:
        """The weights of the first interval. ddk kinds: Eq. 1 of the initial ratios (required)."""
        if self.adaptive:
            return dict(zip(self.domains, discrepancy_from_ratios(self._in_order(ratios, RATIO))))
        if self.kind == "uniform":
            return {d: 1.0 / len(self.domains) for d in self.domains}
        if self.kind == "natural":
            return _normalised(self.natural, self.domains, "natural sizes")
        return dict(self.fixed)

    def update(self, current: Mapping[str, float], ratios: Mapping[str, float] | None = None) -> dict[str, float]:
        """The weights of the next interval. ddk: Eq. 2 with history and floor; ddk-no-smoothing:
        Eq. 1 of the new ratios alone; uniform/natural/fixed: ``current`` unchanged."""
        if self.kind == "ddk":
            prev = self._in_order(current, "current weight")
            return dict(zip(self.domains, smooth_update_from_ratios(prev, self._in_order(ratios, RATIO), self.alpha)))
        if self.kind == "ddk-no-smoothing":
            return dict(zip(self.domains, discrepancy_from_ratios(self._in_order(ratios, RATIO))))
        return dict(zip(self.domains, map(float, self._in_order(current, "current weight"))))


# --- gap sources (the edge): where the ratios come from -----------------------------------------

def ratios_from_perplexities(ppl_student: Mapping[str, float], ppl_teacher: Mapping[str, float]) -> dict[str, float]:
    """ℓ_S/ℓ_T per domain, from two dicts over the same domains."""
    if set(ppl_student) != set(ppl_teacher):
        raise ValueError(f"student perplexities cover {sorted(ppl_student)} but teacher's cover {sorted(ppl_teacher)}")
    domains = list(ppl_student)
    ratios = _ratio_vector([ppl_student[d] for d in domains], [ppl_teacher[d] for d in domains])
    return dict(zip(domains, ratios))


def _from_retention(retention: Mapping[str, float], domains: Sequence[str] | None, source: str) -> dict[str, float]:
    wanted = list(retention) if domains is None else list(domains)
    missing = [d for d in wanted if d not in retention]
    if missing:
        raise ValueError(f"{source}: no retention for domains {missing}; it has {sorted(retention)}")
    ratios = {d: 1.0 / float(retention[d]) if retention[d] > 0 else math.nan for d in wanted}
    bad = {d: retention[d] for d, v in ratios.items() if not math.isfinite(v)}  # NaN, <= 0, or so small 1/x is inf
    if bad:
        raise ValueError(f"{source}: retention must be finite and > 0 to give a ratio, got {bad}")
    return ratios


def ratios_from_scorecard(path_or_scorecard, student: str = "student",
                          domains: Sequence[str] | None = None) -> dict[str, float]:
    """The ratio per domain from a harness scorecard: ``1 / retention`` of ``student``.

    ``path_or_scorecard``: a ``harness.scorecard.Scorecard``, the path of its scorecard.json, or
    the folder holding it. The mapping: retention is the share of the teacher's score the student
    keeps, ``teacher/student`` for lower-is-better metrics and ``student/teacher`` for
    higher-is-better ones. For a perplexity-type slice (perplexity, bits per byte) ``1/retention =
    student/teacher`` is exactly DDK's ℓ_S/ℓ_T; for an accuracy slice it is ``teacher/student``,
    the analogous "how far behind" factor (> 1 where the student lags). A domain mixing several
    slices uses the reciprocal of their weighted-mean retention. ``domains`` picks (and requires)
    a subset; by default every domain the student was scored on.
    """
    from harness.scorecard import Scorecard  # a shared record; the pure core above needs no pandas

    card = path_or_scorecard
    if not isinstance(card, Scorecard):
        path = Path(card)
        card = Scorecard.load(path / "scorecard.json" if path.is_dir() else path)
    table = card.domains
    rows = table[table["model"] == student]
    if rows.empty:
        raise ValueError(f"the scorecard has no model {student!r}; it has {card.model_names}")
    retention = {row.domain: float(row.retention) for row in rows.itertuples()}
    return _from_retention(retention, domains, f"scorecard of suite {card.suite!r}, model {student!r}")


def ratios_from_mlflow(run_id: str, student: str = "student", tracking_uri: str | None = None,
                       domains: Sequence[str] | None = None) -> dict[str, float]:
    """The ratio per domain (``1 / retention``, see ``ratios_from_scorecard``) from an eval run.

    ``run_id`` is the parent eval run (metrics ``<model>/<domain>/retention``) or a nested model
    run (metrics ``<domain>/retention``, tag ``kdh.model``); a nested run of another model leads to
    its parent. ``tracking_uri`` defaults to kdh's (``MLFLOW_TRACKING_URI``, else the kdh home).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from harness import home

    client = MlflowClient(tracking_uri or home.tracking_uri())
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ValueError(f"MLflow run {run_id!r} not found: {err.message}") from None
    model = run.data.tags.get("kdh.model")
    parent = run.data.tags.get("mlflow.parentRunId")
    if model is not None and model != student and parent:
        run, model = client.get_run(parent), None
    metrics = run.data.metrics
    source = f"MLflow run {run.info.run_id}"
    if model == student:
        retention = {k[: -len("/retention")]: v for k, v in metrics.items()
                     if k.endswith("/retention") and k.count("/") == 1}
    else:
        # the parent: "<model>/<domain>/retention"; model names never hold "/" in kdh
        per_model: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == "retention":
                per_model.setdefault(parts[0], {})[parts[1]] = value
        if student not in per_model:
            raise ValueError(f"{source} has no retention of model {student!r}; it has models {sorted(per_model)}")
        retention = per_model[student]
    if not retention:
        raise ValueError(f"{source} (model {model!r}) logged no '<domain>/retention' metrics")
    return _from_retention(retention, domains, f"{source}, model {student!r}")
