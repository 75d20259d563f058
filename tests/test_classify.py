"""`kdh classify` on the tiny demo world: a classifier trained on half of each domain labels the
other half; a corpus mixed from the domains' held-out files is sorted back into them, checked, and
`kdh prepare --classified` records the classifier in the store; a threshold nobody meets fails the
checks (exit 2); a saved classifier loads to the same predictions and fingerprint, an edited one is
refused; wrong input is exit 2 naming what is wrong."""

from __future__ import annotations

import json
import random

import mlflow
import numpy as np
import pytest

from harness.cli import main

DOMAINS = ("arithmetic", "code", "prose", "records")


@pytest.fixture(scope="module")
def examples(tiny_world):
    from harness.classify import read_labelled

    return read_labelled({d: [tiny_world.domain_file(d, "train.jsonl")] for d in DOMAINS})


@pytest.fixture(scope="module")
def mixed(tiny_world, tmp_path_factory):
    """The half of each domain's training documents that `--holdout 0.5` keeps from the classifier,
    shuffled, unlabelled; and each document's true domain."""
    from harness.classify import held_out

    rows = [(text, d) for d in DOMAINS for text in (json.loads(line)["text"] for line in
            tiny_world.domain_file(d, "train.jsonl").read_text().splitlines()) if held_out(text, 0.5, 0)]
    random.Random(0).shuffle(rows)
    path = tmp_path_factory.mktemp("mixed") / "mixed.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text, _ in rows))
    return path, dict(rows)


@pytest.fixture(scope="module")
def classified(tiny_world, mixed, tmp_path_factory):
    """`kdh classify` of the mixed corpus, cut into ~16 KB pieces labelled by two worker processes:
    (exit code, output folder, tracking URI)."""
    folder = tmp_path_factory.mktemp("classify")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("harness.classify_corpus.PIECE_BYTES", 16_000)
        code = main(["classify", "--input", str(mixed[0]), "--out", str(folder / "out"), "--holdout", "0.5",
                     "--workers", "2", "--tracking-uri", uri])
    return code, folder / "out", uri


def test_half_of_each_domain_classifies_the_other_half_and_round_trips(examples, tmp_path):
    from harness.classify import load, save, train

    trained = train(examples, holdout=0.5)
    assert trained.accuracy >= 0.95
    assert trained.confusion.to_numpy().sum() == trained.counts["held_out"].sum() > 40
    assert list(trained.confusion.index) == list(trained.confusion.columns) == list(DOMAINS)

    folder = save(trained.classifier, tmp_path / "classifier")
    loaded = load(folder)
    texts = [t for d in DOMAINS for t in examples[d][:5]]
    assert loaded.fingerprint == trained.classifier.fingerprint
    assert np.array_equal(loaded.probabilities(texts), trained.classifier.probabilities(texts))
    names, confidence = loaded.label(texts, 0.5)
    assert names == trained.classifier.label(texts, 0.5)[0] and names[:5] == ["arithmetic"] * 5
    assert np.array_equal(confidence, trained.classifier.label(texts, 0.5)[1])

    coef = np.load(folder / "coef.npy")
    coef[0, 0] += 1.0
    np.save(folder / "coef.npy", coef)
    with pytest.raises(Exception, match="do not match the fingerprint"):
        load(folder)


def test_a_mixed_corpus_goes_to_its_domains_and_prepare_records_the_classifier(classified, mixed, tiny_world,
                                                                                tmp_path, capsys):
    code, out, uri = classified
    assert code == 0
    truth = mixed[1]
    summary = json.loads((out / "classification.json").read_text())
    right = wrong = 0
    for domain in DOMAINS:
        texts = [json.loads(line)["text"] for line in (out / f"{domain}.jsonl").read_text().splitlines()]
        assert len(texts) == summary["counts"][domain] > 0
        right += sum(truth[t] == domain for t in texts)
        wrong += sum(truth[t] != domain for t in texts)
    assert right / (right + wrong) >= 0.95 and summary["unknown_share"] <= 0.2
    assert summary["documents"] == len(truth)
    from harness.classify import load
    from harness.classify_corpus import label_corpus

    # One process and one piece give the same bytes as two workers over many pieces.
    again = label_corpus(load(out / "classifier"), [mixed[0]], tmp_path / "again", threshold=0.5, workers=1)
    assert [(out / f"{b}.jsonl").read_bytes() == (again.out / f"{b}.jsonl").read_bytes()
            for b in (*DOMAINS, "unknown")] == [True] * 5

    run = mlflow.search_runs(experiment_names=["kdh/default"], output_format="list",
                             filter_string="tags.`kdh.kind` = 'classify'")[0]
    assert run.info.status == "FINISHED" and run.data.tags["kdh.classifier"] == summary["classifier"]["fingerprint"]
    assert run.data.metrics["documents/code"] == summary["counts"]["code"]
    assert {"classifier/classifier.json", "classifier/coef.npy"} <= {
        a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "classifier")}

    assert main(["prepare", "--classified", str(out), "--out", str(tmp_path / "store"), "--tracking-uri", uri]) == 0
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["provenance"]["classifier"] == summary["classifier"]["fingerprint"]
    assert [s["path"] for s in manifest["domains"]["code"]["train"]["sources"]] == [str(out / "code.jsonl")]
    from harness.steps import labelled_by

    assert labelled_by(tmp_path / "store") == summary["classifier"]["fingerprint"]  # what `kdh distill` tags
    assert "left out" in capsys.readouterr().err


def test_a_threshold_nothing_meets_sends_documents_to_unknown_and_fails_the_check(classified, mixed, tmp_path, capsys):
    _, out, uri = classified
    capsys.readouterr()
    code = main(["classify", "--input", str(mixed[0]), "--classifier", str(out / "classifier"), "--threshold", "0.999",
                 "--out", str(tmp_path / "out"), "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert code == 2 and "the classified corpus failed" in err and "are unknown, above --max-unknown 20.0%" in err
    summary = json.loads((tmp_path / "out" / "classification.json").read_text())
    assert summary["counts"]["unknown"] > 0.2 * summary["documents"]
    assert summary["classifier"]["fingerprint"] == json.loads((out / "classification.json").read_text())[
        "classifier"]["fingerprint"]  # reused, not retrained


def test_wrong_input_is_bad_input_naming_it(tiny_world, mixed, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = ["classify", "--out", str(tmp_path / "out"), "--tracking-uri", uri]
    cases = [
        (["--input", str(tmp_path / "nosuch.jsonl")], f"corpus path {tmp_path / 'nosuch.jsonl'} does not exist"),
        (["--input", str(mixed[0]), "--labelled", f"poetry={mixed[0]}"], "--labelled: domain(s) poetry are not in the suite"),
        (["--input", str(mixed[0]), "--threshold", "1.5"], "--threshold 1.5: must be in [0, 1]"),
        (["--input", str(mixed[0]), "--classifier", str(tmp_path)], f"{tmp_path}: not a kdh classifier folder"),
    ]
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": "  "}\n')
    cases.append((["--input", str(mixed[0]), "--labelled", f"prose={empty}"], "domain 'prose': its labelled corpus"))
    for flags, message in cases:
        assert main([*base, *flags]) == 2, flags
        assert message in capsys.readouterr().err, flags
