"""DDK domain weights: Eq. 1 and Eq. 2 against hand-worked values, and the mixtures."""

from __future__ import annotations

import math
import random

import pytest

from distiller.ddk import (ALPHA, Mixture, discrepancy_factor, discrepancy_from_ratios, ratios_from_perplexities,
                           smooth_update, smooth_update_from_ratios)

DOMAINS = ("code", "prose", "arithmetic", "records")


def test_eq1_by_hand():
    # ratios ℓ_S/ℓ_T = 4/4 = 1 and 6/3 = 2 → softmax: e^1/(e^1+e^2) = 1/(1+e) = 0.268941, e/(1+e) = 0.731059
    r = discrepancy_factor([4.0, 6.0], [4.0, 3.0])
    assert r == pytest.approx([0.2689414, 0.7310586], abs=1e-7)
    assert sum(r) == pytest.approx(1.0)


def test_eq2_one_step_by_hand():
    # r_prev = [0.5, 0.5], ratios [1, 2]: ψ = [0.5e, 0.5e²]; ψ/Σψ = [1/(1+e), e/(1+e)] = [0.268941, 0.731059]
    # r_next = 0.5·[0.268941, 0.731059] + (1 − 0.5)/2 = [0.134471 + 0.25, 0.365529 + 0.25] = [0.384471, 0.615529]
    r = smooth_update([0.5, 0.5], [4.0, 6.0], [4.0, 3.0], alpha=0.5)
    assert r == pytest.approx([0.3844707, 0.6155293], abs=1e-7)
    # history matters: from r_prev = [0.9, 0.1], ψ = [0.9e, 0.1e²] → ψ/Σψ = 0.9/(0.9+0.1e) = 0.768029
    # r_next[0] = 0.5·0.768029 + 0.25 = 0.634015
    assert smooth_update([0.9, 0.1], [1.0, 2.0], [1.0, 1.0])[0] == pytest.approx(0.6340145, abs=1e-6)


def test_weights_sum_to_one_respect_the_floor_and_order_for_any_input():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 12)
        ratios = [rng.uniform(0.05, 50.0) for _ in range(n)]
        prev = [rng.random() for _ in range(n)]
        alpha = rng.choice([ALPHA, 0.1, 0.9, 1.0])
        r1, r2 = discrepancy_from_ratios(ratios), smooth_update_from_ratios(prev, ratios, alpha)
        assert sum(r1) == pytest.approx(1.0) and sum(r2) == pytest.approx(1.0)
        assert min(r2) >= (1 - alpha) / n - 1e-12
        # Eq. 1 is monotone: a larger ratio never gets a smaller weight
        by_ratio = [w for _, w in sorted(zip(ratios, r1))]
        assert all(a <= b + 1e-15 for a, b in zip(by_ratio, by_ratio[1:]))
    # from equal history Eq. 2 is monotone too
    r = smooth_update_from_ratios([0.25] * 4, [1.2, 1.5, 1.1, 1.8])
    assert r.index(max(r)) == 3 and r.index(min(r)) == 2


def test_eq1_is_invariant_to_a_constant_added_to_all_ratios():
    ratios = [1.2, 1.5, 1.1, 1.8]
    assert discrepancy_from_ratios([x + 7.0 for x in ratios]) == pytest.approx(discrepancy_from_ratios(ratios))


def test_big_ratios_are_stable():
    r1 = discrepancy_from_ratios([800.0, 1.0, 799.0])
    assert all(math.isfinite(v) for v in r1) and r1[1] == 0.0 and r1[0] > r1[2]
    r2 = smooth_update_from_ratios([0.0, 1.0, 1e-300], [800.0, 1.0, 900.0])
    assert all(math.isfinite(v) for v in r2) and sum(r2) == pytest.approx(1.0)
    assert r2[0] == pytest.approx(0.5 / 3)  # r_prev = 0: the floor, not nan
    assert r2[2] == pytest.approx(0.5 + 0.5 / 3)  # 1e-300·e^900 dwarfs 1·e^1


@pytest.mark.parametrize("student, teacher", [([1.0], [1.0, 2.0]), ([0.0], [1.0]), ([math.nan], [1.0]),
                                              ([1.0], [math.inf]), ([], []), ([-2.0], [1.0])])
def test_bad_perplexities_raise(student, teacher):
    with pytest.raises(ValueError):
        discrepancy_factor(student, teacher)


def test_bad_history_or_alpha_raise():
    for prev, alpha in (([0.0, 0.0], 0.5), ([-0.1, 1.0], 0.5), ([0.5], 0.5), ([0.5, 0.5], 1.5)):
        with pytest.raises(ValueError):
            smooth_update_from_ratios(prev, [1.0, 2.0], alpha)


# --------------------------------------------------------------------------------------------- mixtures

RATIOS = {"code": 1.8, "prose": 1.2, "arithmetic": 1.5, "records": 1.1}


def test_parse_each_kind_and_normalise_fixed():
    assert Mixture.parse("ddk", DOMAINS).kind == "ddk"
    assert Mixture.parse(" ddk-no-smoothing ", DOMAINS).adaptive
    assert not Mixture.parse("uniform", DOMAINS).adaptive
    fixed = Mixture.parse("fixed:code=4, prose=3,arithmetic=2,records=1", DOMAINS)
    assert fixed.fixed == pytest.approx({"code": 0.4, "prose": 0.3, "arithmetic": 0.2, "records": 0.1})
    sizes = {"code": 10, "prose": 30, "arithmetic": 40, "records": 20}
    natural = Mixture.parse("natural", DOMAINS, natural_sizes=sizes)
    assert natural.initial(None) == pytest.approx({"code": 0.1, "prose": 0.3, "arithmetic": 0.4, "records": 0.2})


@pytest.mark.parametrize("spec, expect", [
    ("doremi", "unknown mixture kind"),
    ("fixed:code=1,prose=1,arithmetic=1", "missing domains ['records']"),
    ("fixed:code=1,prose=1,arithmetic=1,records=1,law=1", "unknown domains ['law']"),
    ("fixed:code=-1,prose=1,arithmetic=1,records=1", ">= 0"),
    ("fixed:code=0,prose=0,arithmetic=0,records=0", "sum to more than 0"),
    ("fixed:code=x,prose=1,arithmetic=1,records=1", "not a number"),
    ("fixed", "missing domains"),
    ("uniform:code=1", "takes no arguments"),
    ("natural", "needs the domain sizes"),
])
def test_parse_errors_name_the_spec_and_what_is_allowed(spec, expect):
    with pytest.raises(ValueError) as err:
        Mixture.parse(spec, DOMAINS)
    assert expect in str(err.value) and repr(spec) in str(err.value) and "allowed" in str(err.value)


def test_ddk_starts_with_eq1_and_updates_with_eq2():
    mix = Mixture.parse("ddk", DOMAINS)
    start = mix.initial(RATIOS)
    assert list(start) == list(DOMAINS)
    assert list(start.values()) == pytest.approx(discrepancy_from_ratios([RATIOS[d] for d in DOMAINS]))
    new_ratios = {"code": 1.1, "prose": 1.9, "arithmetic": 1.3, "records": 1.0}
    nxt = mix.update(start, new_ratios)
    assert list(nxt.values()) == pytest.approx(
        smooth_update_from_ratios(list(start.values()), [new_ratios[d] for d in DOMAINS], ALPHA))
    with pytest.raises(ValueError, match="needs the perplexity ratio"):
        mix.initial(None)
    with pytest.raises(ValueError, match=r"no perplexity ratio .* for domains \['records'\]"):
        mix.update(start, {"code": 1.0, "prose": 1.0, "arithmetic": 1.0})


def test_no_smoothing_is_eq1_of_the_new_ratios_only():
    mix = Mixture.parse("ddk-no-smoothing", DOMAINS)
    new_ratios = {"code": 1.1, "prose": 1.9, "arithmetic": 1.3, "records": 1.0}
    from_a = mix.update(mix.initial(RATIOS), new_ratios)
    from_b = mix.update({d: 0.25 for d in DOMAINS}, new_ratios)
    assert from_a == pytest.approx(from_b) and from_a == pytest.approx(mix.initial(new_ratios))


@pytest.mark.parametrize("spec", ["uniform", "natural", "fixed:code=1,prose=2,arithmetic=3,records=4"])
def test_static_mixtures_never_change(spec):
    mix = Mixture.parse(spec, DOMAINS, natural_sizes={d: i + 1 for i, d in enumerate(DOMAINS)})
    start = mix.initial(None)
    assert sum(start.values()) == pytest.approx(1.0)
    assert mix.update(start, RATIOS) == start and mix.update(start, {"code": 99.0}) == start
    if spec == "uniform":
        assert set(start.values()) == {0.25}


# --------------------------------------------------------------------------------------------- gap sources

def test_ratios_from_perplexities():
    ratios = ratios_from_perplexities({"code": 6.0, "prose": 3.0}, {"code": 3.0, "prose": 3.0})
    assert ratios == {"code": 2.0, "prose": 1.0}
    with pytest.raises(ValueError, match="cover"):
        ratios_from_perplexities({"code": 6.0}, {"prose": 3.0})
