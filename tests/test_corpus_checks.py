"""Checks of a prepared corpus (real Great Expectations runs): a clean summary passes; each kind of
bad one fails with the domain/split and the value named; empty and overlong documents only warn."""

from __future__ import annotations

import copy

import pytest

from harness.corpus_checks import TABLE_COLUMNS, CorpusCheckFailed, check_corpus
from harness.errors import EXIT_BAD_INPUT, ValidationFailed

DOMAINS = ["code", "prose", "arithmetic"]


def clean() -> dict:
    def counts(documents, tokens, duplicates=0):
        return {"documents": documents, "tokens": tokens, "empty_documents": 0, "overlong_documents": 0,
                "invalid_utf8_documents": 0, "duplicate_documents": duplicates}

    return {domain: {"train": counts(1000 * (i + 1), 250_000 * (i + 1), duplicates=12),
                     "validation": counts(100, 25_000)} for i, domain in enumerate(DOMAINS)}


def failures(summary, domains=DOMAINS, **options) -> list[str]:
    with pytest.raises(CorpusCheckFailed) as caught:
        check_corpus(summary, domains, **options)
    assert isinstance(caught.value, ValidationFailed) and caught.value.exit_code == EXIT_BAD_INPUT
    assert "the prepared corpus failed" in str(caught.value)
    return caught.value.failures


def test_a_clean_corpus_passes_with_a_table_to_print():
    check = check_corpus(clean(), DOMAINS)
    assert check.passed and check.failures == [] and check.warnings == []
    table = check.table
    assert list(table.columns) == TABLE_COLUMNS
    assert list(zip(table["domain"], table["split"])) == [(d, s) for d in DOMAINS for s in ("train", "validation")]
    code_train = table.iloc[0]
    assert (code_train["documents"], code_train["tokens"], code_train["duplicate_documents"]) == (1000, 250_000, 12)
    assert code_train["duplicate_rate"] == pytest.approx(0.012)
    assert str(table["documents"].dtype) == "int64"


def test_a_missing_domain_and_an_extra_one_are_named():
    summary = clean()
    del summary["prose"]
    summary["legal"] = clean()["code"]
    found = failures(summary)
    assert len(found) == 1  # the missing domain's splits are not reported a second time
    assert "missing 'prose'" in found[0] and "'legal', which the suite does not name" in found[0]


def test_a_missing_split_is_named_with_its_domain():
    summary = clean()
    del summary["arithmetic"]["validation"]
    summary["code"]["test"] = summary["code"]["validation"]
    found = failures(summary)
    assert "domain 'arithmetic' must have the splits train and validation: missing validation" in found
    assert "domain 'code' must have the splits train and validation: unexpected test" in found


def test_a_split_without_tokens_or_documents_fails():
    summary = clean()
    summary["prose"]["validation"].update(documents=0, tokens=0)
    summary["code"]["train"]["tokens"] = 0
    found = failures(summary)
    assert "prose/validation has 0 documents; every domain needs text in each split — check its source files" in found
    assert any(f.startswith("prose/validation has 0 tokens") for f in found)
    assert any(f.startswith("code/train has 0 tokens") for f in found)
    assert len(found) == 3  # no rate is computed over no documents, so nothing else fails


def test_too_many_duplicates_fail_above_the_max():
    summary = clean()
    summary["code"]["train"]["duplicate_documents"] = 600
    assert failures(summary) == [
        "code/train: 60.0% of its documents are duplicates (600/1000), above the max 50.0%; deduplicate the source "
        "or raise max_duplicate_rate"]
    assert check_corpus(summary, DOMAINS, max_duplicate_rate=0.6).passed  # at the max is allowed
    assert any("above the max 1.0%" in f for f in failures(clean(), max_duplicate_rate=0.01))


def test_invalid_utf8_documents_fail():
    summary = clean()
    summary["arithmetic"]["train"]["invalid_utf8_documents"] = 3
    assert failures(summary) == ["arithmetic/train has 3 of 3000 documents that are not valid UTF-8; re-encode them as "
                                 "UTF-8 or remove them from the source"]


def test_empty_and_overlong_documents_warn_without_failing():
    summary = clean()
    summary["code"]["validation"]["empty_documents"] = 4
    summary["prose"]["train"]["overlong_documents"] = 2
    check = check_corpus(summary, DOMAINS)
    assert check.passed and check.failures == []
    assert check.warnings == [
        "code/validation has 4 empty documents (4.0% of 100); they add no tokens — check how the source is split into "
        "documents",
        "prose/train has 2 overlong documents (0.1% of 2000), longer than the prepare step's limit"]
    assert check.table.set_index(["domain", "split"]).loc[("code", "validation"), "empty_rate"] == pytest.approx(0.04)


def test_failures_and_warnings_come_back_together_when_asked_not_to_raise():
    summary = clean()
    summary["code"]["train"]["invalid_utf8_documents"] = 1
    summary["code"]["train"]["empty_documents"] = 1
    check = check_corpus(summary, DOMAINS, raise_on_failure=False)
    assert not check.passed
    assert len(check.failures) == 1 and "code/train has 1 of 1000" in check.failures[0]
    assert len(check.warnings) == 1 and "code/train has 1 empty" in check.warnings[0]
    with pytest.raises(CorpusCheckFailed) as caught:
        check_corpus(summary, DOMAINS)
    assert caught.value.check.warnings == check.warnings  # the command can still print them


def test_a_missing_or_negative_count_is_named():
    summary = copy.deepcopy(clean())
    del summary["prose"]["train"]["tokens"]
    summary["code"]["validation"]["duplicate_documents"] = -1
    summary["arithmetic"]["validation"]["empty_documents"] = "many"
    found = failures(summary)
    assert "prose/train: tokens is missing or not a number; the prepare step's summary must count it" in found
    assert "arithmetic/validation: empty_documents is missing or not a number; the prepare step's summary must count it" in found
    assert "code/validation: duplicate_documents is -1; a count cannot be negative" in found


def test_an_empty_summary_names_every_domain():
    found = failures({})
    assert found == ["the corpus must hold exactly the suite's domains: it is missing 'arithmetic', 'code', 'prose' "
                     "(prepare them, or drop them from the suite)"]


def test_a_max_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="max_duplicate_rate must be in"):
        check_corpus(clean(), DOMAINS, max_duplicate_rate=1.5)
