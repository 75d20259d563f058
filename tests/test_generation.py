"""Generation slices: the metric arithmetic on strings, the demo world's prompt → reference items,
and `kdh eval` / `kdh gate` end to end on suites/generation.yaml over the tiny world (real lm-eval
generate_until runs, the real result cache, real MLflow). What a user relies on: every model's
generations are scored against the reference and against the teacher's, the teacher's generations
come back from the cache with its scores, and a damaged candidate fails a generation slice's
regression check through the paired test."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from lm_eval.api.metrics import exact_match_hf_evaluate
from safetensors.torch import load_file, save_file

from harness import cache, scoring
from harness.cli import main
from harness.demo.items import STOPS, build_generation_items
from harness.generation import KDH_METRICS, exact_match, rouge_l, score_generations
from harness.metrics import from_sums
from harness.registry import Domain, Slice, Suite
from harness.scorecard import Scorecard

SUITE = Path(__file__).resolve().parent.parent / "suites" / "generation.yaml"
GENERATION_METRICS = {"exact_match", *KDH_METRICS}


def test_rouge_l_and_exact_match_on_strings():
    assert rouge_l("the cat sat", "the cat sat") == 1.0
    # LCS 2 words: precision 2/2, recall 2/6, F = 2PR/(P+R) = 0.5
    assert rouge_l("the cat", "the cat sat on the mat") == pytest.approx(0.5)
    assert rouge_l(" The Cat", "the cat") == 1.0 and exact_match(" The Cat", "the cat") == 0.0  # words, not case
    assert rouge_l("!!!", "!!!") == 1.0 and rouge_l("!!!", "???") == 0.0  # no words: only identical text agrees
    pairs = [(" 26", " 26"), (" 26", "26"), (" 26", " 27"), ("x = 1", "x = 1 ")]
    for prediction, reference in pairs:  # the same rule as lm-eval's exact_match with its defaults
        assert exact_match(prediction, reference) == exact_match_hf_evaluate([prediction], [reference])["exact_match"]


def _slice(name: str, metric: str) -> Slice:
    return Slice(name=name, task="generation.yaml", metric=metric, higher_is_better=True,
                 template={"output_type": "generate_until"})


def test_vs_teacher_is_measured_against_the_references_generations():
    suite = Suite("s", Path("s.yaml"), (Domain("d", (_slice("gen", "rougeL_vs_teacher"),)),))
    answers = {"teacher": [" the cat sat", " 42", ""], "student": [" the cat", " 42", "x"]}
    samples = [{"model": m, "domain": "d", "slice": "gen", "metric": "rougeL_vs_teacher", "doc_id": i,
                "doc_hash": str(i), "value": math.nan, "weight": 1.0, "answer": a, "gold": [" the cat sat on", " 42", "y"][i]}
               for m, found in answers.items() for i, a in enumerate(found)]
    lm_rows = [{"model": m, "domain": "d", "slice": "gen", "metric": "exact_match", "value": 0.0, "primary": False}
               for m in answers]
    rows, scored = score_generations(suite, lm_rows, samples, reference="teacher")
    table = pd.DataFrame(rows).set_index(["model", "metric"])["value"]
    assert table["teacher", "rougeL_vs_teacher"] == table["teacher", "exact_match_vs_teacher"] == 1.0
    assert table["student", "rougeL_vs_teacher"] == pytest.approx((0.8 + 1.0 + 0.0) / 3)
    assert table["student", "exact_match_vs_teacher"] == pytest.approx(1 / 3)
    assert table["student", "rougeL"] == pytest.approx((2 * 1 * 0.5 / 1.5 + 1.0 + 0.0) / 3)
    # each model's added rows sit beside its lm-eval rows; only the counted metric is primary
    assert [r["model"] for r in rows] == ["teacher"] * 4 + ["student"] * 4
    assert [r["metric"] for r in rows if r.get("primary")] == ["rougeL_vs_teacher"] * 2
    # the per-item values the gate's paired test resamples
    student = [s["value"] for s in scored if s["model"] == "student"]
    assert student == pytest.approx([0.8, 1.0, 0.0])
    # an item the teacher has no generation for is NaN (validation then refuses it), not a silent score
    _, partial = score_generations(suite, lm_rows, [s for s in samples if (s["model"], s["doc_id"]) != ("teacher", 2)],
                                   reference="teacher")
    assert math.isnan([s["value"] for s in partial if s["model"] == "student"][2])


def test_demo_generation_items_are_the_documents_own_continuations(tiny_world):
    docs = {d: [json.loads(line)["text"] for line in tiny_world.domain_file(d, "test_ppl.jsonl").open()]
            for d in ("code", "prose", "arithmetic", "records")}
    for domain, texts in docs.items():
        items = [json.loads(line) for line in tiny_world.domain_file(domain, "test_gen.jsonl").open()]
        assert len(items) == tiny_world.manifest["recipe"]["gen_items"], domain
        assert items == build_generation_items(domain, texts, len(items), 1234, max_prompt_bytes=128 - 32)
        for item in items:
            prompt, reference = item["prompt"], item["reference"]
            assert len(prompt.encode()) <= 96 and 0 < len(reference.encode()) <= 40
            assert not any(stop in reference for stop in STOPS)  # the model is stopped where the truth stops
            text = next(t for t in texts if prompt + reference in t)
            after = text[text.index(prompt + reference) + len(prompt + reference):]
            assert after == "" or any(after.startswith(stop) for stop in STOPS), (domain, item, after[:10])
        if domain == "code":  # a line's start → its rest
            assert all(not item["prompt"].endswith("\n") for item in items)


@pytest.fixture(scope="module")
def runs(tiny_world, tmp_path_factory):
    """`kdh eval` of teacher and student from an empty cache, then again with only the student's entry
    gone; every model `evaluate_model` scored is recorded."""
    folder = tmp_path_factory.mktemp("generation")
    scored: list[str] = []
    real = scoring.evaluate_model

    def counting(ref, *args, **kwargs):
        scored.append(ref.name)
        return real(ref, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scoring, "evaluate_model", counting)
        patch.setattr(cache, "folder", lambda: folder / "cache")
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        assert main(["eval", "--suite", str(SUITE), "--limit", "6", "--out", str(folder / "first"),
                     "--tracking-uri", uri]) == 0
        first_scored = list(scored)
        first = Scorecard.load(folder / "first")
        (folder / "cache" / f"{first.models['student']['cache_key']}.json").unlink()
        scored.clear()
        assert main(["eval", "--suite", str(SUITE), "--limit", "6", "--out", str(folder / "second"),
                     "--tracking-uri", uri]) == 0
        yield {"folder": folder, "uri": uri, "first": first, "first_scored": first_scored,
               "second": Scorecard.load(folder / "second"), "second_scored": list(scored), "world": tiny_world}


def _generation(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["slice"] != "ppl"]


def test_eval_scores_generation_slices_against_reference_and_teacher(runs):
    card = runs["first"]
    assert runs["first_scored"] == ["teacher", "student"]
    rows = _generation(card.rows)
    assert set(rows["domain"]) == {"code", "prose", "arithmetic", "records"}
    for (model, domain), group in rows.groupby(["model", "domain"]):
        assert set(group["metric"]) == GENERATION_METRICS, (model, domain)
        assert (group["n"] == 6).all()
    values = rows.set_index(["model", "domain", "metric"])["value"]
    assert (values.xs("teacher", level="model").xs("rougeL_vs_teacher", level="metric") == 1.0).all()
    assert values.between(0.0, 1.0).all()
    counted = rows[rows["primary"]].set_index("domain")["metric"]
    assert counted["arithmetic"].eq("exact_match_vs_teacher").all() and counted["code"].eq("rougeL_vs_teacher").all()

    # per item: the answers beside the reference, and the rows are their means
    items = _generation(card.items)
    assert len(items) == 2 * 4 * 6 and items["answer"].str.len().gt(0).any()
    references = [json.loads(line)["reference"] for line in runs["world"].domain_file("records", "test_gen.jsonl").open()]
    assert list(items[(items["model"] == "student") & (items["domain"] == "records")]["gold"]) == references[:6]
    for (model, domain), group in items.groupby(["model", "domain"]):
        mean_rouge = sum(rouge_l(a, g) for a, g in zip(group["answer"], group["gold"])) / len(group)
        assert values[model, domain, "rougeL"] == pytest.approx(mean_rouge)
        # lm-eval's exact_match and kdh's rule agree item by item
        assert values[model, domain, "exact_match"] == pytest.approx(
            sum(exact_match(a, g) for a, g in zip(group["answer"], group["gold"])) / len(group))
    samples = _generation(card.samples)
    for (model, domain, metric), group in samples.groupby(["model", "domain", "metric"]):
        assert len(group) == 6 and group["doc_hash"].str.len().gt(0).all()
        assert from_sums(metric, group["value"].sum(), group["weight"].sum()) == pytest.approx(values[model, domain, metric])


def test_a_second_eval_takes_the_teacher_and_its_generations_from_the_cache(runs):
    assert runs["second_scored"] == ["student"]  # the teacher is not asked to generate again
    card = runs["second"]
    assert card.models["teacher"]["cached"] and not card.models["student"]["cached"]
    student = lambda c: _generation(c.rows[c.rows["model"] == "student"]).reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(student(runs["first"]), student(card))
    assert student(card).set_index(["domain", "metric"])["value"].xs("rougeL_vs_teacher", level="metric").notna().all()


def test_the_gate_fails_a_damaged_candidate_on_a_generation_slice_with_a_p_value(runs, tmp_path):
    """The champion here is the teacher itself: on the tiny world only the teacher writes what the
    teacher writes, so a candidate that drops to the tiny student's level is a large, paired drop."""
    world = runs["world"]
    damaged = tmp_path / "damaged"
    shutil.copytree(world.student_dir, damaged)
    weights = next(damaged.glob("*.safetensors"))
    tensors, noise = load_file(weights), torch.Generator().manual_seed(0)
    save_file({k: v + 0.2 * torch.randn(v.shape, generator=noise) if v.ndim == 2 else v for k, v in tensors.items()},
              weights, metadata={"format": "pt"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cache, "folder", lambda: runs["folder"] / "cache")
        code = main(["gate", "--suite", str(SUITE), "--limit", "6", "--teacher", str(world.teacher_dir),
                     "--candidate", str(damaged), "--champion", str(world.teacher_dir), "--out", str(tmp_path / "out"),
                     "--tracking-uri", runs["uri"]])
    assert code == 1
    verdict = pd.read_csv(tmp_path / "out" / "verdict.csv")
    slices = ["rest-of-line", "end-of-sentence", "answer", "fields"]
    failed = verdict[(verdict["check"] == "regression") & verdict["slice"].isin(slices) & (verdict["status"] == "fail")]
    assert sorted(failed["slice"]) == sorted(slices)
    assert (failed["p_value"] < 0.05).all() and failed["reason"].str.contains("p=0.0").all()
