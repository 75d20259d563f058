"""`kdh prepare` end to end on the tiny demo world: the suite's corpora become a checked token store,
logged to MLflow; a test slice copied into a training domain fails the contamination check (exit 1)
with the domain and the overlap named; wrong input is exit 2 naming what is wrong."""

from __future__ import annotations

import json

import mlflow
import pytest

from harness.cli import main


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_prepare_makes_a_checked_store_logs_it_and_finds_it_again(tiny_world, uri, capsys):
    from distiller.store import TokenStore

    assert main(["prepare", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "Token store" in out and "records" in out and " fail " not in out
    run = mlflow.search_runs(experiment_names=["kdh/default"], output_format="list")[0]
    assert run.info.status == "FINISHED" and run.data.tags["kdh.kind"] == "prepare"
    store = TokenStore(run.data.params["store"])
    assert store.domains == ["arithmetic", "code", "prose", "records"]
    assert run.data.metrics["tokens/code/train"] == store.summary()["code"]["train"]["tokens"] > 0
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "tables")}
    assert {"tables/corpus.json", "tables/contamination.json", "tables/contamination_checks.json"} <= artifacts

    assert main(["prepare", "--tracking-uri", uri]) == 0  # the same inputs: content-addressed, nothing to do
    assert f"Token store up to date: {store.root}" in capsys.readouterr().out


def test_a_test_slice_copied_into_training_fails_the_contamination_check(tiny_world, uri, tmp_path, capsys):
    leaked = tmp_path / "code-train.jsonl"
    test_rows = tiny_world.domain_file("code", "test_ppl.jsonl").read_text()
    leaked.write_text(tiny_world.domain_file("code", "train.jsonl").read_text() + test_rows)
    assert main(["prepare", "--corpus", f"code={leaked}", "--out", str(tmp_path / "store"), "--tracking-uri", uri]) == 1
    out = capsys.readouterr().out
    failed = [line for line in out.splitlines() if " fail " in line]
    # The perplexity slice, and the next-line items cut from the same held-out text; no other domain.
    assert [line.split()[:3] for line in failed] == [["code", "ppl", "fail"], ["code", "next-line", "fail"]]
    n = sum(1 for line in test_rows.splitlines() if line.strip())
    assert f"{n}/{n} test examples" in failed[0] and "training domain 'code' (100.0%)" in failed[0]


def test_wrong_corpora_are_bad_input_naming_them(tiny_world, uri, tmp_path, capsys):
    assert main(["prepare", "--corpus", f"nosuch={tmp_path}", "--tracking-uri", uri]) == 2
    assert "--corpus: domain(s) nosuch are not in the suite" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.bin").write_bytes(b"\x00")
    assert main(["prepare", "--corpus", f"prose={empty}", "--tracking-uri", uri]) == 2
    assert f"corpus path {empty} has no readable file" in capsys.readouterr().err

    broken = tmp_path / "broken.jsonl"
    good = tiny_world.domain_file("prose", "train.jsonl").read_bytes()
    broken.write_bytes(good + b'{"text": "caf\xe9"}\n')  # Latin-1, not UTF-8
    assert main(["prepare", "--corpus", f"prose={broken}", "--out", str(tmp_path / "s"), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "the prepared corpus failed" in err and "prose/train" in err and "UTF-8" in err
    run = mlflow.search_runs(experiment_names=["kdh/default"], output_format="list")[0]
    assert run.data.tags["kdh.corpus_checks"] == "fail"  # the run records what was found
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["domains"]["prose"]["train"][
        "invalid_utf8_documents"] == 1
