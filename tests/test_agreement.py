"""Teacher–student agreement (harness/agreement.py) and its gate checks, on the tiny demo world's real
models: the arithmetic on distributions, a model against itself through both methods (same vocabulary
and aligned next bytes across tokenizers), and the "Done when" of the analytics issue: a suite
threshold on agreement fails `kdh gate` for a damaged student and passes an intact one, with the
agreement and calibration figures in the scorecard and in MLflow."""

from __future__ import annotations

import math
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from harness import agreement
from harness.cli import main
from harness.models import ModelRef, load
from harness.scorecard import Scorecard, item_comparison


def test_divergences_and_calibration_on_known_distributions():
    same = torch.log_softmax(torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]), -1)
    tally = agreement.compare(same, same, torch.tensor([0, 2])).figures()
    assert tally["top1_agreement"] == 1 and abs(tally["kl_bits"]) < 1e-6 and abs(tally["js_bits"]) < 1e-6
    # Disjoint certainties: JS is its maximum, 1 bit; the two argmaxes differ.
    left, right = torch.log(torch.tensor([[1.0, 0.0]])), torch.log(torch.tensor([[0.0, 1.0]]))
    disjoint = agreement.compare(left, right, torch.tensor([0])).figures()
    assert disjoint["top1_agreement"] == 0 and disjoint["js_bits"] == pytest.approx(1.0)
    broken = agreement.compare(same, torch.full_like(same, math.nan), torch.tensor([0, 2])).figures()
    assert all(math.isnan(broken[k]) for k in ("top1_agreement", "kl_bits", "js_bits", "ece"))  # NaN, not a number
    # A model 90% sure and right 9 times in 10 is calibrated; one 90% sure and always wrong is off by 0.9.
    bins = np.zeros((agreement.BINS, 3))
    bins[13] = [10, 9.0, 9]
    assert agreement.expected_calibration_error(bins) == pytest.approx(0.0)
    bins[13] = [10, 9.0, 0]
    assert agreement.expected_calibration_error(bins) == pytest.approx(0.9)


def test_aligned_boundaries_are_the_offsets_both_tokenizations_share():
    # "ab|c|de" against "a|bc|de": both end a token at 0 (the prefix), 3 and 5.
    assert agreement.aligned_boundaries([0, 2, 3, 5], [0, 1, 3, 5]) == [(0, 0, 0), (3, 2, 2), (5, 3, 3)]


def test_a_model_agrees_with_itself_by_either_method(tiny_world):
    side = agreement.Side.of(*load(ModelRef("teacher", str(tiny_world.teacher_dir))))
    text = tiny_world.domain_file("code", "test_ppl.jsonl").read_text().splitlines()[0][:600]
    exact = agreement.same_vocabulary_tally(side, side, [text]).figures()
    tables = (side.byte_tables(),) * 2
    by_bytes = agreement.cross_vocabulary_tally(side, side, text, tables).figures()
    for figures in (exact, by_bytes):
        assert figures["positions"] > 10 and figures["top1_agreement"] == 1.0
        assert abs(figures["kl_bits"]) < 1e-5 and abs(figures["js_bits"]) < 1e-5
        assert figures["ece"] == pytest.approx(figures["reference_ece"])
    # every token boundary is aligned with itself: one next-byte position per token position (and one
    # more: the window's last token, whose next token lies past the context but whose next byte is known)
    assert by_bytes["positions"] == exact["positions"] + 1


def test_documents_read_a_batch_at_a_time_score_as_each_alone(tiny_world):
    """Right-padded batches of unequal documents give each document's own figures (and a document too
    short to predict anything adds none)."""
    teacher = agreement.Side.of(*load(ModelRef("teacher", str(tiny_world.teacher_dir))))
    student = agreement.Side.of(*load(ModelRef("student", str(tiny_world.student_dir))))
    lines = tiny_world.domain_file("prose", "test_ppl.jsonl").read_text().splitlines()
    texts = [lines[0][:900], lines[1][:90], "", lines[2][:400]]
    together = agreement.same_vocabulary_tally(teacher, student, texts)
    alone = [agreement.same_vocabulary_tally(teacher, student, [t]) for t in texts]
    assert together.positions == sum(a.positions for a in alone) > 0
    summed = sum(alone, agreement.Tally())
    for key, value in summed.figures().items():
        assert together.figures()[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert agreement.length_batches([3, 9, 5, 1], tokens=10) == [[1], [2, 0], [3]]  # padded to its longest


@pytest.fixture(scope="module")
def agreement_suite(tiny_world, tmp_path_factory):
    """The default suite's code domain, gated on top-1 agreement; no retention floor, so that only
    agreement can fail."""
    from harness import home

    folder = tmp_path_factory.mktemp("agreement-suite")
    shutil.copytree(home.repo_suites_dir() / "tasks", folder / "tasks")
    text = (home.repo_suites_dir() / "default.yaml").read_text()
    text = text[:text.index("  - name: prose")].replace("min_retention: 0.6", "min_retention: 0.0\n  min_agreement: 0.9")
    (folder / "agreement.yaml").write_text(text)
    return folder / "agreement.yaml"


def _copy(source, folder, damage: bool):
    shutil.copytree(source, folder)
    if damage:  # the output layer's rows shuffled: the model now predicts other tokens than it learnt
        weights = next(folder.glob("*.safetensors"))
        tensors = load_file(weights)
        head = next(k for k in tensors if k.endswith(("lm_head.weight", "embed_tokens.weight")))
        order = torch.randperm(tensors[head].shape[0], generator=torch.Generator().manual_seed(0))
        tensors = {k: (v[order] if k == head else v) for k, v in tensors.items()}
        save_file(tensors, weights, metadata={"format": "pt"})
    return folder


def test_an_agreement_threshold_fails_the_gate_for_a_damaged_student(tiny_world, agreement_suite, tmp_path):
    outcomes = {}
    for name, damage in (("intact", False), ("damaged", True)):
        candidate = _copy(tiny_world.teacher_dir, tmp_path / name / "model", damage)
        code = main(["gate", "--suite", str(agreement_suite), "--teacher", str(tiny_world.teacher_dir),
                     "--candidate", str(candidate), "--champion", "none", "--limit", "4",
                     "--out", str(tmp_path / name / "gate"), "--summary", str(tmp_path / name / "summary.md")])
        verdict = pd.read_csv(tmp_path / name / "gate" / "verdict.csv")
        outcomes[name] = code, verdict[verdict["check"] == "agreement"].set_index("slice")
    code, checks = outcomes["intact"]
    assert code == 0 and set(checks["status"]) == {"pass"} and (checks["observed"] == 1.0).all()
    code, checks = outcomes["damaged"]
    assert code == 1 and set(checks["status"]) == {"fail"} and (checks["observed"] < 0.9).all()
    assert set(checks.index) == {"ppl", "next-line", "(domain)"}
    summary = (tmp_path / "damaged" / "summary.md").read_text()
    assert "top-1 agreement with the teacher" in summary
    # the gate summary carries the candidate's trend (no champion versions here: one point, no forecast)
    assert "### Trends over champion versions" in summary and "a forecast needs 3" in summary

    # The figures are in the scorecard the gate saved, per slice, with both models' calibration.
    card = Scorecard.load(tmp_path / "damaged" / "gate")
    found = card.agreement.set_index(["model", "slice"])
    assert set(found.index) == {("candidate", "ppl"), ("candidate", "next-line")}
    assert (found["method"] == "token").all() and (found["positions"] > 0).all()
    assert found[["kl_bits", "js_bits", "ece", "reference_ece"]].notna().all().all()

    # Side by side, item by item: the intact copy answers as the teacher does, the damaged one does not.
    intact = Scorecard.load(tmp_path / "intact" / "gate")
    choices = item_comparison(intact.items, "teacher", "candidate", "code", "next-line")
    assert len(choices) == 4 and not choices["differs"].any()
    assert (choices["teacher answer"] == choices["candidate answer"]).all() and (choices["gold"] != "").all()
    damaged = item_comparison(card.items, "teacher", "candidate", "code", "ppl")
    assert len(damaged) == 4 and damaged["differs"].all() and (damaged["candidate bits_per_byte"] > 0).all()


def test_kdh_eval_writes_agreement_calibration_and_efficiency_to_mlflow(tiny_world, tmp_path, capsys):
    assert main(["eval", "--limit", "4", "--out", str(tmp_path), "--model", f"teacher={tiny_world.teacher_dir}",
                 "--model", f"cross={tiny_world.cross_student_dir}", "--profile"]) == 0
    printed = capsys.readouterr().out
    assert "Agreement with teacher and calibration per domain" in printed and "next-byte" in printed
    assert "Generation profile" in printed and "Student ÷ teacher beside the student's mean retention" in printed
    profile = pd.read_csv(tmp_path / "profile.csv").set_index(["model", "batch"])
    assert set(profile.index) == {(m, b) for m in ("teacher", "cross") for b in (1, 8)}
    assert (profile[["ttft_ms", "ms_per_token", "tokens_per_s", "peak_memory_mb"]] > 0).all().all()
    assert profile.loc[("cross", 1), "parameters"] < profile.loc[("teacher", 1), "parameters"]
    assert profile["hardware"].str.contains("torch").all()
    card = Scorecard.load(tmp_path)
    domains = card.agreement_domains.set_index("domain")
    assert set(domains.index) == {"code", "prose", "arithmetic", "records"}
    run = mlflow.get_run(printed.split("MLflow: experiment kdh/default, run ")[1].split()[0])
    for domain, row in domains.iterrows():
        assert run.data.metrics[f"cross/{domain}/top1_agreement"] == pytest.approx(row["top1_agreement"])
        assert run.data.metrics[f"cross/{domain}/ece"] == pytest.approx(row["ece"])
        assert not math.isnan(run.data.metrics[f"cross/{domain}/kl_bits"])
    assert run.data.metrics["cross/profile/batch8/tokens_per_s"] == pytest.approx(profile.loc[("cross", 8), "tokens_per_s"])


def test_agreement_checks_are_planned_where_set_and_fail_closed_without_figures():
    from harness.gate import decide, planned_checks
    from harness.registry import Domain, Slice, Suite, Thresholds
    from harness.scorecard import AGREEMENT_COLUMNS, ROW_COLUMNS

    slices = (Slice("ppl", "t", "bits_per_byte", False), Slice("mc", "t", "acc", True,
                                                                thresholds=Thresholds(max_kl=0.5)))
    suite = Suite("s", path=None, domains=(Domain("code", slices, thresholds=Thresholds(min_agreement=0.4)),),
                  thresholds=Thresholds(min_retention=0.0))
    rows = pd.DataFrame([{"model": m, "domain": "code", "slice": s, "metric": metric, "value": 1.0, "stderr": math.nan,
                          "n": 5, "higher_is_better": metric == "acc", "primary": True, "weight": 1.0}
                         for m in ("teacher", "candidate") for s, metric in (("ppl", "bits_per_byte"), ("mc", "acc"))],
                        columns=ROW_COLUMNS)
    agree = pd.DataFrame([{"model": "candidate", "domain": "code", "slice": "ppl", "method": "token", "documents": 5,
                           "positions": 300, "top1_agreement": 0.5, "kl_bits": 0.2, "js_bits": 0.05, "ece": 0.01,
                           "reference_ece": 0.02}], columns=AGREEMENT_COLUMNS)
    verdict = decide(suite, Scorecard("s", "teacher", rows, pd.DataFrame(), agreement=agree))
    assert [tuple(r) for r in verdict.rows[["domain", "slice", "check"]].to_numpy()] == planned_checks(suite)
    checks = verdict.rows[verdict.rows["check"].isin(["agreement", "kl"])].set_index(["slice", "check"])["status"]
    # ppl measured and above the floor; mc has no figure: both of its checks fail rather than pass unseen.
    assert checks.to_dict() == {("ppl", "agreement"): "pass", ("mc", "agreement"): "fail", ("mc", "kl"): "fail",
                                ("(domain)", "agreement"): "pass"}
