"""The token store (distiller/corpus.py, store.py, prepare.py) on real tokenizers and real files.

What a user relies on: the store's blocks are exactly the GPT packing of the corpus (EOS before every
document, corpus order, ragged tail dropped), whatever the input format and wherever the pieces are
cut; ids take 2 bytes when the vocabulary fits; the same inputs find the same store and rewrite
nothing; a killed prepare resumes into the very bytes an uninterrupted one makes; the manifest's
counts are exact; bad input is refused naming the file or domain; the sampler draws the same rows
from the store as from in-memory tensors.

No mocks: GPT-2 and Qwen2 tokenizers from tests/fixtures, corpora cut from the Python standard
library's own sources, written as JSON Lines, Parquet (pyarrow), text files and `save_to_disk`
datasets. Small pieces (``corpus.PIECE_BYTES`` patched) make shards small, so blocks straddle them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from distiller import corpus
from distiller.data import DomainSampler, pack_blocks
from distiller.errors import InputError
from distiller.prepare import prepare
from distiller.store import MANIFEST, Blocks, TokenStore, token_dtype

REPO = Path(__file__).resolve().parent.parent
GPT2 = REPO / "tests" / "fixtures" / "tokenizers" / "gpt2"
QWEN2 = REPO / "tests" / "fixtures" / "tokenizers" / "qwen2"
MODULES = ("json.decoder", "json.encoder", "textwrap", "difflib", "argparse", "dataclasses", "shutil",
           "pathlib", "inspect", "collections", "functools", "string")
UNICODE = ["naïve café, déjà vu — «quoted» ünïcödé", "你好，世界！ 1234567 don't", "emoji 🙂🚀 and tabs\tand\r\nCRLF"]


# ---- corpora and the reference packing ----

@functools.cache
def _stdlib_source() -> str:
    return "\n".join(inspect.getsource(importlib.import_module(name)) for name in MODULES)


def documents(n: int, size: int = 1000, start: int = 0) -> list[str]:
    """``n`` distinct documents of about ``size`` characters of real Python source (a few hundred
    GPT-2 tokens each), from chunk ``start`` on; past the end of the source they wrap, tagged."""
    source = _stdlib_source()
    chunks = len(source) // size
    out = []
    for i in range(start, start + n):
        text = source[(i % chunks) * size:(i % chunks + 1) * size]
        out.append(text if i < chunks else f"# copy {i // chunks}\n{text}")
    return out


@functools.cache
def tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@functools.cache
def _encode(path: Path, text: str) -> tuple[int, ...]:
    return tuple(tokenizer(path)(text, add_special_tokens=False)["input_ids"])


def reference_stream(path: Path, docs: list[str]) -> np.ndarray:
    """Plain-Python GPT packing: the tokenizer's EOS id before every document, in corpus order."""
    eos = tokenizer(path).eos_token_id
    stream: list[int] = []
    for doc in docs:
        stream.append(eos)
        stream += _encode(path, doc)
    return np.asarray(stream, dtype=np.int64)


def reference_rows(stream: np.ndarray, width: int) -> np.ndarray:
    n = len(stream) // width
    return stream[:n * width].reshape(n, width)


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


def write_parquet(path: Path, docs: list[str], row_group_size: int = 5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), path, row_group_size=row_group_size)
    return path


def write_text_folder(folder: Path, docs: list[str], suffixes=(".txt",)) -> Path:
    folder.mkdir(parents=True)
    for i, doc in enumerate(docs):
        (folder / f"{i:04d}{suffixes[i % len(suffixes)]}").write_bytes(doc.encode())
    return folder


def write_dataset(folder: Path, docs: list[str], shards: int = 1) -> Path:
    import datasets

    datasets.disable_progress_bars()
    datasets.Dataset.from_dict({"text": docs, "id": list(range(len(docs)))}).save_to_disk(str(folder), num_shards=shards)
    return folder


def run_prepare(corpora, tok_path: Path, out: Path | None = None, **kwargs):
    kwargs.setdefault("workers", 2)
    return prepare(corpora, tokenizer(tok_path), out, progress_stream=io.StringIO(), **kwargs)


def files_of(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def sha256_tree(root: Path) -> dict[str, str]:
    return {rel: hashlib.sha256(p.read_bytes()).hexdigest() for rel, p in files_of(root).items()}


def whole_stream(store: TokenStore, domain: str, split: str = "train") -> np.ndarray:
    stream = store.stream(domain, split)
    return stream.read(0, len(stream)).astype(np.int64)


# ---- 1. the blocks are the reference packing, across shard ends ----

def test_blocks_equal_the_reference_packing_across_many_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "PIECE_BYTES", 4096)
    first, second = documents(40), documents(35, start=40)
    train = [write_jsonl(tmp_path / "a.jsonl", first), write_jsonl(tmp_path / "b.jsonl", second)]
    validation = [write_jsonl(tmp_path / "v.jsonl", documents(5, start=100))]
    prepared = run_prepare({"code": {"train": train, "validation": validation}}, GPT2, tmp_path / "store")
    store = TokenStore(prepared.root)
    stream = store.stream("code", "train")
    ref = reference_stream(GPT2, first + second)
    eos = tokenizer(GPT2).eos_token_id

    assert len(stream.shards) >= 10, "the corpus should be cut into many pieces"
    assert len(stream) == len(ref) and stream.documents == len(first) + len(second)
    assert np.array_equal(stream.read(0, len(stream)).astype(np.int64), ref)

    for width in (97, 257):  # widths that no shard size divides: blocks straddle shard ends
        blocks = Blocks(stream, width)
        rows = reference_rows(ref, width)
        assert len(blocks) == len(rows) and blocks.shape == rows.shape
        got = torch.stack([blocks[i] for i in range(len(blocks))])
        assert got.dtype == torch.long and torch.equal(got, torch.from_numpy(rows))
        straddling = [i for i in range(len(blocks)) if any(i * width < s < (i + 1) * width for s in stream.starts)]
        assert len(straddling) >= 5
        # the in-memory packing the store replaces gives the same rows
        assert torch.equal(got, pack_blocks(first + second, tokenizer(GPT2), width - 1, eos))
    limited = Blocks(stream, 97, limit=3)
    assert len(limited) == 3 and torch.equal(limited[2], torch.from_numpy(reference_rows(ref, 97)[2]))

    # reads that start before, end after, or span several shard ends
    for boundary in stream.starts[1:-1]:
        assert np.array_equal(stream.read(boundary - 7, 15), ref[boundary - 7:boundary + 8])
    a, b = stream.starts[2] - 3, stream.starts[6] + 3
    assert np.array_equal(stream.read(a, b - a), ref[a:b])
    assert np.array_equal(np.concatenate(list(stream.chunks(size=1000))), ref)
    with pytest.raises(IndexError):
        stream.read(len(stream) - 2, 3)

    starts = stream.document_starts()
    assert len(starts) == len(first) + len(second)
    assert np.array_equal(starts, np.flatnonzero(ref == eos))  # GPT-2 code never holds <|endoftext|> itself
    assert all(stream.read(int(s), 1)[0] == eos for s in starts)


# ---- 2. the id type and the bytes a token costs ----

def test_gpt2_ids_take_two_bytes_and_the_store_about_two_bytes_a_token(tmp_path):
    train, validation = documents(240), documents(10, start=300)
    prepared = run_prepare({"code": {"train": [write_jsonl(tmp_path / "t.jsonl", train)],
                                     "validation": [write_jsonl(tmp_path / "v.jsonl", validation)]}},
                           GPT2, tmp_path / "store")
    store = TokenStore(prepared.root)
    assert len(tokenizer(GPT2)) == 50257 and token_dtype(50257) == np.uint16
    assert store.dtype == np.uint16 and store.stream("code", "train").read(0, 4).dtype == np.uint16
    tokens = sum(len(store.stream("code", s)) for s in ("train", "validation"))
    docs = len(train) + len(validation)
    assert 200 <= tokens / docs <= 600, "documents of a few hundred tokens"
    for split in ("train", "validation"):
        for shard in store.stream("code", split).shards:
            assert shard.tokens.stat().st_size == 2 * shard.n_tokens
            assert shard.docs.stat().st_size == 4 * shard.n_documents
    on_disk = sum(p.stat().st_size for p in files_of(store.root).values())
    assert on_disk / tokens <= 2.05, f"{on_disk} bytes for {tokens} tokens"
    assert np.array_equal(whole_stream(store, "code"), reference_stream(GPT2, train))


def test_qwen2_ids_take_four_bytes_and_match_its_tokenizer(tmp_path):
    train = documents(12, start=7) + UNICODE
    prepared = run_prepare({"mixed": {"train": [write_jsonl(tmp_path / "t.jsonl", train)],
                                      "validation": [write_jsonl(tmp_path / "v.jsonl", UNICODE[:1])]}},
                           QWEN2, tmp_path / "store")
    store = TokenStore(prepared.root)
    assert len(tokenizer(QWEN2)) == 151646 and token_dtype(151646) == np.uint32
    assert store.dtype == np.uint32 and store.tokenizer["eos_id"] == 151643
    stream = store.stream("mixed", "train")
    assert all(s.tokens.stat().st_size == 4 * s.n_tokens for s in stream.shards)
    ref = reference_stream(QWEN2, train)
    assert ref.max() > 1 << 16  # ids a uint16 store would have cut
    assert np.array_equal(whole_stream(store, "mixed"), ref)
    assert np.array_equal(whole_stream(store, "mixed", "validation"), reference_stream(QWEN2, UNICODE[:1]))


# ---- 3. every input format gives the same stream ----

def test_jsonl_parquet_text_files_and_saved_datasets_give_the_same_stream(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "PIECE_BYTES", 2048)  # several pieces of each kind
    docs = documents(30, size=600, start=200) + UNICODE
    text_folder = write_text_folder(tmp_path / "texts", docs, suffixes=(".txt", ".txt", ".md"))
    (text_folder / ".hidden.txt").write_text("not a document")  # hidden files are not read
    (text_folder / "notes.csv").write_text("a,b\n")  # nor files of other kinds
    validation = [write_jsonl(tmp_path / "v.jsonl", documents(2, start=400))]
    corpora = {
        "jsonl": [write_jsonl(tmp_path / "c.jsonl", docs)],
        "parquet": [write_parquet(tmp_path / "c.parquet", docs, row_group_size=4)],
        "text": [text_folder],
        "dataset": [write_dataset(tmp_path / "saved", docs, shards=3)],
        # a saved dataset inside a folder is read as a dataset, its metadata files as no document
        "nested": [write_dataset(tmp_path / "outer" / "saved", docs, shards=2).parent],
        # one corpus of several paths of several kinds: read in the order given
        "mixed": [write_jsonl(tmp_path / "m" / "first.jsonl", docs[:10]),
                  write_parquet(tmp_path / "m" / "middle.parquet", docs[10:25]),
                  write_text_folder(tmp_path / "m" / "last", docs[25:])],
    }
    assert len(corpus.pieces([corpora["parquet"][0]])) >= 3
    assert len(corpus.pieces([corpora["text"][0]])) >= 3
    prepared = run_prepare({d: {"train": paths, "validation": validation} for d, paths in corpora.items()},
                           GPT2, tmp_path / "store")
    store = TokenStore(prepared.root)
    ref = reference_stream(GPT2, docs)
    assert store.domains == sorted(corpora)
    for domain in corpora:
        assert np.array_equal(whole_stream(store, domain), ref), domain
        assert store.stream(domain, "train").documents == len(docs)
        assert store.summary()[domain]["train"]["documents"] == len(docs)


# ---- 4. content-addressed ----

def test_the_same_inputs_find_the_same_store_and_rewrite_nothing(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", documents(20))
    corpora = {"code": {"train": [train], "validation": [write_jsonl(tmp_path / "v.jsonl", documents(3, start=50))]}}
    root = tmp_path / "stores"
    first = run_prepare(corpora, GPT2, root=root)
    assert not first.up_to_date and first.root == root / first.key[:16] and len(first.key) == 64
    assert TokenStore(first.root).key == first.key
    assert (first.root / MANIFEST).stat().st_mode & 0o777 == 0o644  # readable by the team, as the shards are
    before = {rel: p.stat().st_mtime_ns for rel, p in files_of(root).items()}
    entries = sorted(p.name for p in root.iterdir())
    assert entries == [first.key[:16]]  # nothing left beside the store

    again = run_prepare(corpora, GPT2, root=root)
    assert again.up_to_date and again.key == first.key and again.root == first.root
    assert again.manifest == first.manifest
    assert {rel: p.stat().st_mtime_ns for rel, p in files_of(root).items()} == before
    assert sorted(p.name for p in root.iterdir()) == entries

    # a changed source file: a new key, and the change names the file
    out = tmp_path / "store"
    base = run_prepare(corpora, GPT2, out)
    assert base.key == first.key and base.changes == []
    write_jsonl(train, documents(21))
    changed = run_prepare(corpora, GPT2, out)
    assert not changed.up_to_date and changed.key != base.key and changed.root == out
    assert len(changed.changes) == 1 and str(train) in changed.changes[0] and "changed" in changed.changes[0]
    assert TokenStore(out).key == changed.key and TokenStore(out).stream("code", "train").documents == 21
    moved = run_prepare(corpora, GPT2, root=root)
    assert moved.root == root / changed.key[:16] != first.root

    # another tokenizer: a change naming the tokenizer, and the store says so when read with the old one
    retokenized = run_prepare(corpora, QWEN2, out)
    assert retokenized.key != changed.key
    assert any("tokenizer" in c and "gpt2" in c and "qwen2" in c for c in retokenized.changes), retokenized.changes
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no old or partial store left
    store = TokenStore(out)
    assert store.dtype == np.uint32
    store.check_tokenizer(tokenizer(QWEN2))
    with pytest.raises(InputError) as caught:
        store.check_tokenizer(tokenizer(GPT2))
    assert "'qwen2'" in str(caught.value) and "'gpt2'" in str(caught.value) and str(out) in str(caught.value)
    with pytest.raises(InputError, match="gpt2"):
        TokenStore(moved.root).check_tokenizer(tokenizer(QWEN2))

    # the same bytes read as another kind (one text document instead of JSON lines) are another store
    as_text = tmp_path / "t.txt"
    as_text.write_bytes(train.read_bytes())
    kinds = {"code": {"train": [as_text], "validation": corpora["code"]["validation"]}}
    assert run_prepare(kinds, GPT2, root=root).key != changed.key


# ---- 5. killed and resumed ----

KILL_PIECE_BYTES = 1024  # one piece per document: hundreds of pieces
KILL_SCRIPT = """
import sys
from pathlib import Path
import distiller.corpus
distiller.corpus.PIECE_BYTES = int(sys.argv[1])
from transformers import AutoTokenizer
from distiller.prepare import prepare
train, validation, out = map(Path, sys.argv[3:6])
prepare({"code": {"train": [train], "validation": [validation]}}, AutoTokenizer.from_pretrained(sys.argv[2]),
        out, workers=1)
"""


def _start_and_kill(train: Path, validation: Path, out: Path, log: Path) -> bool:
    """Run prepare in a subprocess and SIGKILL it (its whole process group: the pool's worker too)
    once a few pieces are on disk. False when it finished before it could be killed."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, str(KILL_PIECE_BYTES), str(GPT2), str(train), str(validation), str(out)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"})
    try:
        deadline = time.monotonic() + 240  # a loaded machine may take long to import transformers
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if len(list(out.parent.glob(f".{out.name}.partial-*/code/train/*.tokens"))) >= 3:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                break
            time.sleep(0.005)
        else:
            pytest.fail(f"prepare wrote no piece within the deadline; its log:\n{log.read_text()[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    if proc.returncode == -signal.SIGKILL:
        return True
    assert proc.returncode == 0, f"prepare failed in the subprocess:\n{log.read_text()[-3000:]}"
    return False


def test_a_killed_prepare_resumes_into_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "PIECE_BYTES", KILL_PIECE_BYTES)
    n_docs = 300
    for attempt in range(4):
        work = tmp_path / f"attempt{attempt}"
        train = write_jsonl(work / "train.jsonl", documents(n_docs))
        validation = write_jsonl(work / "validation.jsonl", documents(4, start=n_docs))
        out = work / "stores" / "store"
        out.parent.mkdir()
        if _start_and_kill(train, validation, out, work / "prepare.log"):
            break
        n_docs *= 4  # it finished first: more pieces, so the kill lands midway
    else:
        pytest.fail("prepare always finished before it could be killed")

    partials = list(out.parent.glob(f".{out.name}.partial-*"))
    assert len(partials) == 1
    pieces_total = len(corpus.pieces([train]))
    finished = sorted((partials[0] / "code" / "train").glob(".*.json"))  # a piece with counts is finished
    assert pieces_total >= 100 and 1 <= len(finished) < pieces_total
    assert not out.exists() or not (out / MANIFEST).exists()
    with pytest.raises(InputError, match="not a token store"):
        TokenStore(out)
    kept = {}
    for marker in finished:
        index = marker.name.split(".")[1]
        stat = (partials[0] / "code" / "train" / f"{index}.tokens").stat()
        kept[f"code/train/{index}.tokens"] = (stat.st_ino, stat.st_mtime_ns)

    corpora = {"code": {"train": [train], "validation": [validation]}}
    resumed = run_prepare(corpora, GPT2, out, workers=1)
    assert not resumed.up_to_date
    for rel, (inode, mtime) in kept.items():  # the finished pieces were kept, not tokenized again
        stat = (out / rel).stat()
        assert (stat.st_ino, stat.st_mtime_ns) == (inode, mtime), rel
    whole = run_prepare(corpora, GPT2, tmp_path / "uninterrupted" / "store", workers=2)
    assert whole.key == resumed.key
    assert sha256_tree(out) == sha256_tree(whole.root)
    assert not any(name.startswith(".") for rel in files_of(out) for name in Path(rel).parts)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # the partial folder is gone
    store = TokenStore(out)
    assert len(store.stream("code", "train").shards) == pieces_total
    assert np.array_equal(whole_stream(store, "code"), reference_stream(GPT2, documents(n_docs)))


# ---- 6. the manifest's counts ----

def test_the_summary_counts_documents_tokens_empties_invalid_text_duplicates_and_overlong(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "PIECE_BYTES", 256)  # duplicates in different pieces are still duplicates
    short = ["def f(x):\n    return x + 1\n", "The quick brown fox jumps over the lazy dog.", UNICODE[1], UNICODE[0]]
    long = documents(1, size=2000)[0]
    lines = [json.dumps({"text": t}).encode() + b"\n" for t in short[:3]]
    lines += [json.dumps({"text": short[0]}).encode() + b"\n"] * 2  # two duplicates of the first
    lines += [b'{"text": ""}\n', json.dumps({"text": "  \n\t "}).encode() + b"\n"]  # two empty documents
    lines += [b"\n", b"   \n"]  # blank lines: no document at all
    lines += [b'{"text": "caf\xe9"}\n', b"\xff\xfe\xfd\n"]  # two lines that are not UTF-8
    lines += [json.dumps({"text": long}).encode() + b"\n"]  # overlong at a limit of 200 tokens
    (tmp_path / "train.jsonl").write_bytes(b"".join(lines))
    folder = tmp_path / "more"
    folder.mkdir()
    (folder / "1.txt").write_bytes(short[3].encode())
    (folder / "2.txt").write_bytes(b"")  # empty
    (folder / "3.txt").write_bytes(b"caf\xe9 au lait")  # not UTF-8
    (folder / "4.md").write_bytes(short[1].encode())  # a duplicate, of a document in the JSON Lines file
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in (short[2], short[2])))

    prepared = run_prepare({"p": {"train": [tmp_path / "train.jsonl", folder],
                                  "validation": [tmp_path / "validation.jsonl"]}},
                           GPT2, tmp_path / "store", max_document_tokens=200)
    store = TokenStore(prepared.root)
    kept = short[:3] + [short[0]] * 2 + [long] + [short[3], short[1]]
    assert len(_encode(GPT2, long)) > 200 and all(len(_encode(GPT2, t)) <= 200 for t in short)
    assert store.summary() == {"p": {
        "train": {"documents": 8, "tokens": sum(len(_encode(GPT2, t)) + 1 for t in kept), "empty_documents": 3,
                  "invalid_utf8_documents": 3, "duplicate_documents": 3, "overlong_documents": 1},
        "validation": {"documents": 2, "tokens": 2 * (len(_encode(GPT2, short[2])) + 1), "empty_documents": 0,
                       "invalid_utf8_documents": 0, "duplicate_documents": 1, "overlong_documents": 0},
    }}
    assert len(store.stream("p", "train").shards) >= 3
    assert np.array_equal(whole_stream(store, "p"), reference_stream(GPT2, kept))  # the overlong one is kept


def test_a_json_escaped_lone_surrogate_is_counted_as_invalid_text_not_a_crash(tmp_path):
    """``"\\ud800"`` is valid JSON (ASCII bytes) but no UTF-8 text: scraped corpora hold such
    escapes. Counting it with the invalid text, or refusing the file as bad input, are both fine;
    any other exception is a bug."""
    (tmp_path / "train.jsonl").write_text('{"text": "fine"}\n{"text": "broken \\ud800 half of a pair"}\n')
    write_jsonl(tmp_path / "validation.jsonl", ["fine"])
    corpora = {"p": {"train": [tmp_path / "train.jsonl"], "validation": [tmp_path / "validation.jsonl"]}}
    try:
        prepared = run_prepare(corpora, GPT2, tmp_path / "store", workers=1)
    except InputError as err:
        assert "train.jsonl" in str(err)
    else:
        counts = TokenStore(prepared.root).summary()["p"]["train"]
        assert (counts["documents"], counts["invalid_utf8_documents"]) == (1, 1)


# ---- 7. bad input ----

def _bad_corpus(kind: str, tmp_path: Path) -> tuple[dict, list[str]]:
    """(corpora, what the message must name) for one kind of bad input."""
    good = write_jsonl(tmp_path / "good.jsonl", ["a fine document"])
    bad: Path
    if kind == "folder without a readable file":
        bad = tmp_path / "folder"
        bad.mkdir()
        (bad / "table.csv").write_text("text\nhello\n")
        (bad / ".hidden.jsonl").write_text('{"text": "hidden"}\n')
        names = [str(bad), "no readable file"]
    elif kind == "missing path":
        bad = tmp_path / "nowhere.jsonl"
        names = [str(bad), "does not exist"]
    elif kind == "line not JSON":
        bad = tmp_path / "broken.jsonl"
        bad.write_text('{"text": "ok"}\n{"text": "unterminated\n')
        names = [str(bad), "not valid JSON"]
    elif kind == "row without text":
        bad = tmp_path / "untexted.jsonl"
        bad.write_text('{"text": "ok"}\n{"body": "no text field"}\n')
        names = [str(bad), '"text"']
    elif kind == "text not a string":
        bad = tmp_path / "numbers.jsonl"
        bad.write_text('{"text": 3}\n')
        names = [str(bad), '"text"']
    elif kind == "parquet without text column":
        bad = tmp_path / "columns.parquet"
        pq.write_table(pa.table({"body": ["a", "b"], "id": [1, 2]}), bad)
        names = [str(bad), "text", "body"]
    elif kind == "DatasetDict folder":
        import datasets

        datasets.disable_progress_bars()
        bad = tmp_path / "dict"
        datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a", "b"]}),
                              "test": datasets.Dataset.from_dict({"text": ["c"]})}).save_to_disk(str(bad))
        names = [str(bad), "DatasetDict", str(bad / "train")]
    elif kind == "all documents empty":
        bad = tmp_path / "blank.jsonl"
        bad.write_text('{"text": ""}\n{"text": "   "}\n\n')
        names = ["'blank'", str(bad), "no document with text"]
    else:
        raise AssertionError(kind)
    domain = "blank" if kind == "all documents empty" else "p"
    return {domain: {"train": [good, bad], "validation": [good]}}, names


@pytest.mark.parametrize("kind", ["folder without a readable file", "missing path", "line not JSON", "row without text",
                                  "text not a string", "parquet without text column", "DatasetDict folder",
                                  "all documents empty"])
def test_bad_input_is_refused_naming_the_file_or_domain(kind, tmp_path):
    corpora, names = _bad_corpus(kind, tmp_path)
    if kind == "all documents empty":
        corpora["blank"]["train"] = corpora["blank"]["train"][1:]
    with pytest.raises(InputError) as caught:
        run_prepare(corpora, GPT2, tmp_path / "store", workers=1)
    for name in names:
        assert name in str(caught.value), (name, str(caught.value))
    assert not (tmp_path / "store").exists()


def test_a_folder_that_is_not_a_whole_store_is_refused(tmp_path):
    folder = tmp_path / "half"
    (folder / "code" / "train").mkdir(parents=True)
    (folder / "code" / "train" / "00000.tokens").write_bytes(b"\0\0" * 8)
    with pytest.raises(InputError, match=re.escape(str(folder))):
        TokenStore(folder)
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        TokenStore(folder)
    (folder / MANIFEST).write_text(json.dumps({"format": "something-else", "version": 1}))
    with pytest.raises(InputError, match="something-else"):
        TokenStore(folder)


# ---- 8. blocks and the sampler ----

def test_blocks_reject_out_of_range_rows_and_the_sampler_draws_the_same_rows_as_from_tensors(tmp_path):
    docs = {"big": documents(30, start=150), "small": documents(3, start=250) + UNICODE}
    corpora = {d: {"train": [write_jsonl(tmp_path / f"{d}.jsonl", texts)],
                   "validation": [write_jsonl(tmp_path / f"{d}-v.jsonl", texts[:1])]} for d, texts in docs.items()}
    store = TokenStore(run_prepare(corpora, GPT2, tmp_path / "store").root)
    width = 65
    blocks = {d: Blocks(store.stream(d, "train"), width) for d in docs}
    tensors = {d: torch.from_numpy(reference_rows(reference_stream(GPT2, texts), width)) for d, texts in docs.items()}
    assert {d: b.shape for d, b in blocks.items()} == {d: tuple(t.shape) for d, t in tensors.items()}
    assert len(blocks["small"]) < 40 < len(blocks["big"])  # the small domain wraps round, reshuffled

    for index in (len(blocks["big"]), len(blocks["big"]) + 5, -1):
        with pytest.raises(IndexError):
            blocks["big"][index]
    with pytest.raises(IndexError):
        Blocks(store.stream("small", "train"), width, limit=2)[2]

    weights = {"big": 0.4, "small": 0.6}
    from_store, from_memory = DomainSampler(blocks, weights, seed=11), DomainSampler(tensors, weights, seed=11)
    for step in range(25):
        if step == 12:
            from_store.set_weights({"big": 0.9, "small": 0.1})
            from_memory.set_weights({"big": 0.9, "small": 0.1})
        rows, domains = from_store.next_batch(4, rank=1, world_size=2)
        expected, expected_domains = from_memory.next_batch(4, rank=1, world_size=2)
        assert domains == expected_domains and torch.equal(rows, expected), step
    assert from_store.state_dict() == from_memory.state_dict()
    assert from_store.epoch["small"] >= 1
