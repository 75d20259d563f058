"""The vocabulary alignment report (harness/alignment.py, `kdh align`) on real tokenizers: GPT-2
and Qwen2 from tests/fixtures/tokenizers, and the tiny demo world's pair through the verb."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoTokenizer

from harness.alignment import alignment_report
from harness.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tokenizers"
TEXT = {"code": ["def tokenize(text):\n    return [t for t in text.split() if t]\n"],
        "prose": ["Distillation transfers a teacher's knowledge into a smaller student model."]}


@pytest.fixture(scope="module")
def gpt2():
    return AutoTokenizer.from_pretrained(FIXTURES / "gpt2")


def test_a_tokenizer_aligns_with_itself_entirely(gpt2):
    report = alignment_report(gpt2, gpt2, TEXT).set_index("domain")
    assert (report["shared_tokens"] == 1.0).all() and (report["shared_boundaries"] == 1.0).all()
    assert (report["teacher_tokens_per_byte"] == report["student_tokens_per_byte"]).all()
    assert report.loc["prose", "bytes"] == len(TEXT["prose"][0].encode())


def test_gpt2_and_qwen2_share_most_but_not_all_boundaries(gpt2):
    qwen2 = AutoTokenizer.from_pretrained(FIXTURES / "qwen2")
    report = alignment_report(gpt2, qwen2, TEXT).set_index("domain")
    code = report.loc["code"]
    # Qwen2 keeps runs of spaces and digits apart where GPT-2 merges differently: the pair is close, not equal.
    assert 0.5 < code["shared_boundaries"] < 1.0 and 0.5 < code["shared_tokens"] <= 1.0
    ids = gpt2(TEXT["code"][0], add_special_tokens=False)["input_ids"]
    assert code["teacher_tokens"] == len(ids) and code["teacher_tokens_per_byte"] == pytest.approx(len(ids) / code["bytes"])


def test_kdh_align_reports_the_demo_pair_per_domain(tiny_world, tmp_path, capsys):
    assert main(["align", "--limit", "4", "--out", str(tmp_path)]) == 0
    assert "Vocabulary alignment" in capsys.readouterr().out
    report = pd.read_csv(tmp_path / "alignment.csv")
    assert list(report["domain"]) == ["code", "prose", "arithmetic", "records"]
    assert report[["shared_tokens", "shared_boundaries"]].gt(0).all().all()
    assert main(["align", "--student", str(tmp_path / "nowhere")]) == 2
