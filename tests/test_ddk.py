"""DDK domain weights: Eq. 1 and Eq. 2 against hand-worked values, the mixtures, the gap sources."""

from __future__ import annotations

import math
import random

import pandas as pd
import pytest

from distiller.ddk import (ALPHA, Mixture, discrepancy_factor, discrepancy_from_ratios, ratios_from_mlflow,
                           ratios_from_perplexities, ratios_from_scorecard, smooth_update, smooth_update_from_ratios)
from harness.scorecard import ROW_COLUMNS, Scorecard

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


def _row(model, domain, slice_, metric, value, higher):
    return dict(model=model, domain=domain, slice=slice_, metric=metric, value=value, stderr=math.nan,
                n=10, higher_is_better=higher, primary=True, weight=1.0)


def _card(student_math_acc=0.4):
    rows = pd.DataFrame([
        _row("teacher", "code", "ppl", "bits_per_byte", 1.0, False),
        _row("student", "code", "ppl", "bits_per_byte", 1.5, False),
        _row("teacher", "math", "mc", "acc", 0.8, True), _row("student", "math", "mc", "acc", student_math_acc, True),
    ], columns=ROW_COLUMNS)
    eff = pd.DataFrame([{"model": m, "parameters": 1, "bytes_on_disk": 1, "tokens_per_s": 1.0, "peak_memory_mb": 1.0,
                         "seconds": 1.0} for m in ("teacher", "student")])
    return Scorecard("s", "teacher", rows, eff)


def test_ratios_from_scorecard_are_one_over_retention(tmp_path):
    card = _card()
    # code: lower is better, retention = 1.0/1.5 → ratio 1.5 = student/teacher bits;
    # math: higher is better, retention = 0.4/0.8 → ratio 2 = teacher/student accuracy
    expected = {"code": 1.5, "math": 2.0}
    assert ratios_from_scorecard(card) == pytest.approx(expected)
    retention = card.domains.set_index(["model", "domain"])["retention"]
    assert ratios_from_scorecard(card)["math"] == pytest.approx(1 / retention[("student", "math")])
    paths = card.save(tmp_path)
    assert ratios_from_scorecard(paths["scorecard.json"]) == pytest.approx(expected)
    assert ratios_from_scorecard(str(tmp_path), domains=["math"]) == pytest.approx({"math": 2.0})
    assert ratios_from_scorecard(card, student="teacher") == pytest.approx({"code": 1.0, "math": 1.0})


def test_ratios_from_scorecard_errors():
    with pytest.raises(ValueError, match=r"no model 'candidate'.*\['teacher', 'student'\]"):
        ratios_from_scorecard(_card(), student="candidate")
    with pytest.raises(ValueError, match=r"no retention for domains \['law'\].*\['code', 'math'\]"):
        ratios_from_scorecard(_card(), domains=["code", "law"])
    with pytest.raises(ValueError, match="finite and > 0"):
        ratios_from_scorecard(_card(student_math_acc=0.0))


def test_ratios_from_mlflow_parent_and_model_runs(tmp_path):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    # A client, not the fluent API: no global tracking URI left behind for other tests.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("kdh/s", artifact_location=(tmp_path / "art").as_uri())
    retention = {"teacher": {"code": 1.0, "math": 1.0}, "student": {"code": 0.8, "math": 0.5}}

    def log(run_id, metrics):
        client.log_batch(run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()])
        client.set_terminated(run_id)

    # the names harness/tracking.py logs: parent "<model>/<domain>/retention", nested "<domain>/…" + kdh.model
    parent = client.create_run(experiment, tags={"kdh.kind": "eval"}).info.run_id
    ids = {}
    for model, per in retention.items():
        ids[model] = client.create_run(experiment, tags={"kdh.kind": "eval", "kdh.model": model,
                                                         "mlflow.parentRunId": parent}).info.run_id
        log(ids[model], {f"{d}/retention": v for d, v in per.items()} | {f"{d}/gap": 1 - v for d, v in per.items()}
            | {f"{d}/mc/acc": 0.5 for d in per})
    log(parent, {f"{m}/{d}/retention": v for m, per in retention.items() for d, v in per.items()})
    expected = {"code": 1.25, "math": 2.0}
    assert ratios_from_mlflow(parent, tracking_uri=uri) == pytest.approx(expected)
    assert ratios_from_mlflow(ids["student"], tracking_uri=uri) == pytest.approx(expected)
    assert ratios_from_mlflow(ids["teacher"], tracking_uri=uri) == pytest.approx(expected)  # → the parent
    with pytest.raises(ValueError, match=r"no retention of model 'candidate'.*\['student', 'teacher'\]"):
        ratios_from_mlflow(parent, student="candidate", tracking_uri=uri)
    with pytest.raises(ValueError, match="not found"):
        ratios_from_mlflow("0" * 32, tracking_uri=uri)
