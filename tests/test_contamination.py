"""Test-set contamination (harness/contamination.py) on real text and the real GPT-2 tokenizer: a
clean training stream shows no overlap, a stream into which a test example was copied is caught
with the right domain, slice and count, wherever the chunks of the stream happen to be cut."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import json.decoder
import math
import re
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from harness.contamination import (
    NGRAM, TestNgrams, contaminated_examples, contamination_report, example_texts,
    ngram_hashes, reference_hash, scan, suite_examples, suite_test_ngrams, tokenize_examples, whitespace_ids,
)
from harness.errors import BadInput
from harness.corpora import worst_per_slice
from harness.gate import contamination_rows
from harness.registry import Thresholds, load_suite

from conftest import TEMPLATES

GPT2 = Path(__file__).parent / "fixtures" / "tokenizers" / "gpt2"

# Test examples: Python source (textwrap's functions) and English prose (argparse's docstring), one
# too short to hold a 13-gram. The training text is other source (json.decoder) and prose (json's
# docstring), which share no 13-gram with them.
CODE_EXAMPLES = [inspect.getsource(f) for f in (textwrap.dedent, textwrap.indent, textwrap.shorten, textwrap.fill)]
SHORT = "pass\n"


def _choice_rows() -> list[dict]:
    sentences = re.split(r"(?<=[.:])\s+", " ".join(argparse.__doc__.split()))
    long = [s.split() for s in sentences if len(s.split()) >= 15]
    return [{"context": " ".join(words[:-4]), "choices": [" " + " ".join(words[-4:]), " " + " ".join(other[-4:])],
             "label": 0} for words, other in zip(long, long[1:] + long[:1])]


CHOICE_ROWS = _choice_rows()

SUITE = """\
name: leak
domains:
  - name: code
    slices:
      - {name: ppl, task: tasks/perplexity.yaml, data: data/code.jsonl, metric: bits_per_byte}
  - name: prose
    slices:
      - {name: mc, task: tasks/choice.yaml, data: data/prose.jsonl, metric: acc}
      - {name: hs, task: hellaswag, metric: acc}
"""


def _jsonl(rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    if not (folder / "vocab.json").is_file():
        pytest.fail(f"the tokenizer fixture {folder} is missing; these tests need the shared tokenizer files")
    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(GPT2)


def _write_suite(folder: Path, code: str, prose: str) -> Path:
    shutil.copytree(TEMPLATES, folder / "tasks")
    (folder / "data").mkdir()
    (folder / "data" / "code.jsonl").write_text(code)
    (folder / "data" / "prose.jsonl").write_text(prose)
    (folder / "suite.yaml").write_text(SUITE)
    return folder / "suite.yaml"


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    code_rows = [{"text": text} for text in CODE_EXAMPLES] + [{"text": SHORT}]
    return load_suite(_write_suite(tmp_path_factory.mktemp("leak"), _jsonl(code_rows), _jsonl(CHOICE_ROWS)))


@pytest.fixture(scope="module")
def test_ngrams(suite, tokenizer):
    return suite_test_ngrams(suite, tokenizer)


def stream(tokenizer, text: str, dtype=np.uint16) -> np.ndarray:
    """A training domain's token stream, as the store would hold it."""
    return np.asarray(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=dtype)


def chunked(tokens: np.ndarray, size: int) -> list[np.ndarray]:
    return [tokens[i:i + size] for i in range(0, len(tokens), size)]


def clean_code(tokenizer):
    return stream(tokenizer, inspect.getsource(json.decoder))


def leaked_code(tokenizer):
    """json.decoder's source with textwrap.indent's source pasted into its middle."""
    source = inspect.getsource(json.decoder)
    middle = source.index("\ndef ", len(source) // 2)
    return stream(tokenizer, source[:middle] + "\n\n" + CODE_EXAMPLES[1] + source[middle:])


def test_examples_are_read_from_text_rows_and_choice_rows(suite):
    texts, not_checked = suite_examples(suite)
    assert list(texts) == ["code/ppl", "prose/mc"]
    assert not_checked == ["prose/hs"]  # a built-in lm-eval task has no local data to read
    assert texts["code/ppl"] == CODE_EXAMPLES + [SHORT]
    first = CHOICE_ROWS[0]
    # A choice item is its question and its true answer, as lm-eval scores it; the distractors are no text.
    assert texts["prose/mc"][0] == first["context"] + first["choices"][first["label"]]
    assert example_texts(suite.domain("prose").slices[0]) == texts["prose/mc"]


def test_the_test_side_counts_examples_and_the_ones_too_short(test_ngrams):
    assert test_ngrams.n == NGRAM
    assert test_ngrams.slices == ("code/ppl", "prose/mc")
    assert test_ngrams.examples == (len(CODE_EXAMPLES) + 1, len(CHOICE_ROWS))
    assert test_ngrams.too_short == (1, 0)  # "pass\n" is 2 tokens
    assert test_ngrams.not_checked == ("prose/hs",)
    assert np.all(np.diff(test_ngrams.hashes.astype(object)) > 0)  # sorted and unique


def test_a_clean_corpus_shows_no_overlap(tokenizer, test_ngrams):
    matches = {"code": scan(test_ngrams, [clean_code(tokenizer)]),
               "prose": scan(test_ngrams, [stream(tokenizer, json.__doc__)])}
    report = contamination_report(matches, test_ngrams)
    assert len(report) == 2 * 3  # every (training domain, test slice), the unchecked one included
    assert report["contaminated"].sum() == 0
    unchecked = report[~report["checked"]]
    assert list(unchecked["slice"]) == ["prose/hs", "prose/hs"] and unchecked["rate"].isna().all()


def test_a_copied_test_example_is_caught_in_its_domain_and_slice(suite, tokenizer, test_ngrams):
    matches = {"code": scan(test_ngrams, chunked(leaked_code(tokenizer), 4096)),
               "prose": scan(test_ngrams, [stream(tokenizer, json.__doc__)])}
    report = contamination_report(matches, test_ngrams).set_index(["domain", "slice"])
    hit = report.loc[("code", "code/ppl")]
    assert (hit["contaminated"], hit["examples"], hit["too_short"], hit["ngram"]) == (1, 5, 1, 13)
    assert math.isclose(hit["rate"], 1 / 5)
    assert report["contaminated"].sum() == 1  # nothing else: not prose, not the other slice
    assert list(contaminated_examples(test_ngrams, matches["code"])["code/ppl"]) == [1]  # textwrap.indent's row

    # The gate's check: one row per test slice, failing above the suite's max_contamination.
    strict = dataclasses.replace(suite, thresholds=Thresholds(max_contamination=0.01))
    rows = contamination_rows(strict, worst_per_slice(report.reset_index())).set_index(["domain", "slice"])
    failed = rows[rows["status"] == "fail"]
    assert list(failed.index) == [("code", "ppl")]
    assert failed["reason"].iloc[0] == ("1/5 test examples have ≥ 80% of their 13-grams in training domain 'code' "
                                        "(20.0%), above 1.0%")
    assert rows.loc[("prose", "hs"), "status"] == "skip"  # a built-in task: no local data to compare
    lenient = dataclasses.replace(suite, thresholds=Thresholds(max_contamination=0.25))
    assert set(contamination_rows(lenient, worst_per_slice(report.reset_index()))["status"]) == {"pass", "skip"}


def test_a_reindented_copy_is_caught_too(tokenizer, test_ngrams):
    """Whitespace tokens are no part of an n-gram: textwrap.indent's source moved into a class (four
    more spaces on every line) is still the same test example."""
    moved = inspect.getsource(json.decoder) + "\nclass Moved:\n" + textwrap.indent(CODE_EXAMPLES[1], "    ")
    found = scan(test_ngrams, chunked(stream(tokenizer, moved), 500))
    assert list(contaminated_examples(test_ngrams, found)["code/ppl"]) == [1]


def test_without_skipping_whitespace_indentation_alone_would_match(suite, tokenizer):
    """Why whitespace is skipped: on GPT-2's tokens (one per space of indentation) a clean Python file
    shares 13-grams with the test code that are nothing but newlines, spaces and a keyword."""
    raw = suite_test_ngrams(suite, tokenizer, skip_whitespace=False)
    tokens = clean_code(tokenizer)
    found = scan(raw, [tokens])
    assert contamination_report({"code": found}, raw, min_share=1e-9)["contaminated"].iloc[0] > 0  # any shared n-gram
    hashes = ngram_hashes(tokens)
    spaces = set(whitespace_ids(tokenizer))
    for at in np.flatnonzero(np.isin(hashes, found)):
        assert sum(int(t) in spaces for t in tokens[at:at + NGRAM]) >= NGRAM // 2  # mostly whitespace


def test_whitespace_ids_are_the_tokens_that_decode_to_whitespace(tokenizer):
    ids = whitespace_ids(tokenizer)
    assert {tokenizer.decode([i]) for i in ids} >= {" ", "\n", "\t", "\n\n"}
    assert all(not tokenizer.decode([i]).strip() for i in ids) and 0 < len(ids) < 100


def test_a_copied_choice_item_is_caught(tokenizer, test_ngrams):
    row = CHOICE_ROWS[2]
    prose = json.__doc__ + "\n" + row["context"] + row["choices"][0] + "\n" + json.__doc__
    report = contamination_report({"prose": scan(test_ngrams, [stream(tokenizer, prose)])}, test_ngrams)
    hit = report.set_index("slice").loc["prose/mc"]
    assert hit["contaminated"] == 1 and hit["domain"] == "prose"
    assert report["contaminated"].sum() == 1


@pytest.mark.parametrize("size", [1, 7, 1 << 20])
def test_ngrams_across_chunk_boundaries_are_found_whatever_the_chunk_size(tokenizer, test_ngrams, size):
    tokens = leaked_code(tokenizer)
    assert np.array_equal(scan(test_ngrams, chunked(tokens, size)), scan(test_ngrams, [tokens]))
    assert len(scan(test_ngrams, chunked(tokens, size))) > 100  # textwrap.indent holds ~200 13-grams


def test_uint16_and_uint32_streams_give_the_same_matches(tokenizer, test_ngrams):
    tokens = leaked_code(tokenizer)
    found16 = scan(test_ngrams, chunked(tokens.astype(np.uint16), 1000))
    found32 = scan(test_ngrams, chunked(tokens.astype(np.uint32), 333))
    assert len(found16) and np.array_equal(found16, found32)


def test_an_example_across_the_internal_blocks_is_found_in_a_long_stream():
    """A long random stream (cut internally into 65,536-token blocks) with one test example pasted
    over every block boundary and over the very start and end: each copy is found in full."""
    rng = np.random.default_rng(7)
    example = rng.integers(0, 2**32, 40, dtype=np.uint64)
    test = TestNgrams.build({"d/s": [example, rng.integers(0, 2**32, 40, dtype=np.uint64)]})
    expected = np.unique(ngram_hashes(example))
    for start in (0, 65_536 - 20, 2 * 65_536 - 1, 3 * 65_536 - 39, 250_000 - 40):
        tokens = rng.integers(0, 2**32, 250_000, dtype=np.uint64).astype(np.uint32)
        tokens[start:start + 40] = example
        for size in (7, 50_000, 250_000):
            assert np.array_equal(scan(test, chunked(tokens, size)), expected), (start, size)
    assert contamination_report({"d": expected}, test)["contaminated"].tolist() == [1]


@settings(max_examples=200, deadline=None)
@given(tokens=arrays(np.uint32, st.integers(0, 60)), n=st.integers(1, 16))
def test_the_vectorised_hash_is_the_plain_python_one(tokens, n):
    expected = [reference_hash(tokens[j:j + n].tolist()) for j in range(len(tokens) - n + 1)]
    assert ngram_hashes(tokens, n).tolist() == expected
    assert ngram_hashes(tokens.astype(np.uint64), n).tolist() == expected


@settings(max_examples=80, deadline=None)
@given(tokens=arrays(np.uint16, st.integers(0, 300), elements=st.integers(0, 40)),
       sizes=st.lists(st.integers(1, 40), min_size=1, max_size=8), skip=st.sets(st.integers(0, 70_000), max_size=5))
def test_scan_matches_hashing_the_whole_stream_at_once(tokens, sizes, skip):
    """Whatever the cuts and the skipped ids, the found hashes are those of the whole stream, less
    its skipped ids, that the test set holds (a skipped id past uint16's range is no trouble)."""
    test = TestNgrams.build({"d/s": [tokens[i:i + 30] for i in range(0, len(tokens), 17)]}, n=5, skip=skip)
    pieces, start = [], 0
    while start < len(tokens):
        size = sizes[len(pieces) % len(sizes)]
        pieces.append(tokens[start:start + size])
        start += size
    kept = tokens[~np.isin(tokens, list(skip))]
    whole = np.intersect1d(ngram_hashes(kept, 5), test.hashes)
    assert np.array_equal(scan(test, pieces), whole)


def test_an_example_n_long_is_checked_and_one_shorter_is_not():
    padded = np.array([0, 1, 2, 3, 99, 4, 5, 6, 7, 8, 9, 10, 11, 99])  # 12 tokens once 99 is skipped
    test = TestNgrams.build({"a/b": [np.arange(13), np.arange(12), np.array([], dtype=np.int64), padded]},
                            skip=[99])
    assert test.examples == (4,) and test.too_short == (3,) and len(test.hashes) == 1
    found = scan(test, [np.arange(20, dtype=np.uint16)])
    row = contamination_report({"t": found}, test).iloc[0]
    assert (row["contaminated"], row["examples"], row["too_short"]) == (1, 4, 3)


def test_an_example_is_contaminated_when_most_of_its_ngrams_occur_in_training():
    """PaLM's and Llama 2's rule: a share of the example's n-grams (MIN_SHARE), not a single one."""
    shared = np.arange(100, 113)
    mostly = np.concatenate([shared, [1]])  # 2 n-grams, 1 seen: half
    whole = np.concatenate([[3], shared])  # 2 n-grams, 1 seen: half
    copied = np.arange(200, 215)  # 3 n-grams, all seen
    test = TestNgrams.build({"a/x": [mostly], "b/y": [whole, copied]})
    training = np.concatenate([shared, [7], copied]).astype(np.uint16)
    report = contamination_report({"t": scan(test, [training])}, test)
    assert report["contaminated"].tolist() == [0, 1]
    assert contamination_report({"t": scan(test, [training])}, test, min_share=0.5)["contaminated"].tolist() == [1, 2]


def test_nothing_to_look_for_reads_no_chunks():
    def never():
        raise AssertionError("the training stream was read")
        yield

    assert len(scan(TestNgrams.build({"a/b": [np.arange(3)]}), never())) == 0


def test_signed_or_nested_chunks_are_refused():
    test = TestNgrams.build({"a/b": [np.arange(20)]})
    with pytest.raises(TypeError, match="training chunk 1: .*unsigned.*int64"):
        scan(test, [np.arange(5, dtype=np.uint16), np.arange(5)])


def test_a_malformed_data_file_names_the_file_and_line(tmp_path):
    suite = load_suite(_write_suite(tmp_path, '{"text": "ok"}\n\n{"text": \n', _jsonl(CHOICE_ROWS[:1]) + "[1, 2]\n"))
    with pytest.raises(BadInput, match=r"code\.jsonl: line 3 is not JSON"):
        example_texts(suite.domain("code").slices[0])
    with pytest.raises(BadInput, match=r"prose\.jsonl: line 2 is a list, not a JSON object"):
        example_texts(suite.domain("prose").slices[0])


def test_tokenizing_adds_no_special_tokens():
    qwen = load_tokenizer(GPT2.parent / "qwen2")
    ids = tokenize_examples({"a/b": ["hello world", ""]}, qwen)["a/b"]
    assert ids[0].tolist() == qwen("hello world", add_special_tokens=False)["input_ids"]
    assert ids[1].tolist() == []
