"""DDK domain weights: Eq. 1 (discrepancy factor), Eq. 2 (smooth update), the mixtures, gap sources.

Paper: Liu et al., "DDK: Distilling Domain Knowledge for Efficient Large Language Models",
NeurIPS 2024 (arXiv 2407.16154), §3.2–3.3; the equations and settings are in docs/distillation.md.

Per domain i the student/teacher validation perplexity ratio x[i] = ℓ_S[i] / ℓ_T[i] is the only
input the maths needs, so the core works on ratios; the paper-shaped functions take the two
perplexity vectors and divide.

    Eq. 1   r = softmax(x)                                     (no temperature)
    Eq. 2   ψ = r_prev · exp(x);  r_next = α·ψ/Σψ + (1−α)/N    (α = 0.5: every domain keeps ≥ (1−α)/N)

The paper's baselines are settings of one ``Mixture``, not copies of the loop: "ddk",
"ddk-no-smoothing" (Eq. 1 recomputed each interval), "uniform" (equal sampling), "natural"
(proportional to domain size, as CPT/KD), "fixed" (weights given by hand).

Pure functions and plain values throughout: where the ratios come from (a measurement, a harness
scorecard) is the caller's business.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from distiller.errors import InputError

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


def ratios_from_perplexities(ppl_student: Mapping[str, float], ppl_teacher: Mapping[str, float]) -> dict[str, float]:
    """ℓ_S/ℓ_T per domain, from two dicts over the same domains."""
    if set(ppl_student) != set(ppl_teacher):
        raise ValueError(f"student perplexities cover {sorted(ppl_student)} but teacher's cover {sorted(ppl_teacher)}")
    domains = list(ppl_student)
    ratios = _ratio_vector([ppl_student[d] for d in domains], [ppl_teacher[d] for d in domains])
    return dict(zip(domains, ratios))


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
            raise InputError(f"mixture {spec!r}: {err}; {allowed}") from None

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


# --- the run's mixture over time -------------------------------------------------------------

@dataclass
class MixtureState:
    """Where a run's mixture stands: the weights sampled with now, Eq. 2's factor r_t, the last
    ratios, the teacher's measurement (taken once: it is frozen) and one history row per update.
    Plain values, so a checkpoint stores it as JSON and a resumed run continues from it exactly."""

    weights: dict[str, float]
    factor: dict[str, float]
    ratios: dict[str, float]
    teacher: dict[str, float]  # ℓ_T per domain (bits per byte across tokenizers)
    history: list[dict] = field(default_factory=list)

    @classmethod
    def start(cls, mixture: Mixture, ratios: Mapping[str, float], teacher: Mapping[str, float],
              natural: Mapping[str, float]) -> "MixtureState":
        """r_0 (Eq. 1) starts the factor's history. Algorithm 1 draws the first interval's data at
        random, i.e. in the corpus's natural proportions: sampling by r_0 at once would put nearly
        all of it on one domain whenever one ratio stands far above the rest."""
        factor = mixture.initial(ratios)
        weights = dict(natural) if mixture.kind == "ddk" else factor
        state = cls(weights=weights, factor=factor, ratios=dict(ratios), teacher=dict(teacher))
        state.history.append({"step": 0, **state.flat()})
        return state

    def update(self, mixture: Mixture, student: Mapping[str, float], step: int) -> None:
        """Every K steps: the student's new measurement → ratios → the next weights (Eq. 2, or the
        baseline's rule)."""
        self.ratios = ratios_from_perplexities(student, self.teacher)
        self.factor = mixture.update(self.factor, self.ratios)
        self.weights = self.factor
        self.history.append({"step": step, **self.flat()})

    def flat(self) -> dict[str, float]:
        """``weight/<domain>`` and ``ratio/<domain>``: a history row, and the names MLflow logs."""
        return {**{f"weight/{d}": w for d, w in self.weights.items()},
                **{f"ratio/{d}": r for d, r in self.ratios.items()}}
