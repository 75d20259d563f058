"""Corpora → a token store, on every core, streaming, resumable, content-addressed (docs/token-store.md).

``prepare`` fingerprints every source file and the tokenizer; their digest is the store's key. A
folder already holding a store with that key is left alone. Otherwise the pieces (distiller/corpus.py)
are tokenized by a pool of worker processes into a partial folder beside the store, one piece's
shards renamed into place at a time, so a killed run keeps its finished pieces and the next run with
the same key does only the rest. The manifest is written last and the partial folder renamed to
the store in one step: no reader ever sees half a store, and a store built in one go and one
resumed after a kill are the same bytes (no time, no order of completion goes into them).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distiller import corpus
from distiller.errors import InputError
from distiller.files import swap_folder, write_atomic_text
from distiller.store import FORMAT, MANIFEST, SPLITS, VERSION, token_dtype, tokenizer_fingerprint

MAX_DOCUMENT_TOKENS = 1 << 17  # longer documents are kept, and counted by the corpus checks
COUNTS = ("documents", "tokens", "empty_documents", "overlong_documents", "invalid_utf8_documents")
_BATCH = 1000  # documents per encode call


@dataclass
class Prepared:
    root: Path
    key: str
    manifest: dict
    up_to_date: bool  # the store was there already: nothing was done
    changes: list[str] = field(default_factory=list)  # what differed from the store that was there
    seconds: float = 0.0
    tokens_per_s: float = 0.0  # over the pieces tokenized by this run


def store_key(tokenizer: dict, sources: dict, max_document_tokens: int, provenance: dict | None = None) -> str:
    """The digest of everything the store's bytes depend on, and of where its domain labels came
    from (``provenance``: the classifier that sorted the documents), so a corpus labelled by another
    classifier is another store."""
    content = {"format": FORMAT, "version": VERSION, "piece_bytes": corpus.PIECE_BYTES, "tokenizer": tokenizer["sha256"],
               "eos": tokenizer["eos_id"], "max_document_tokens": max_document_tokens,
               "sources": {d: {s: [(f["kind"], f["sha256"]) for f in files] for s, files in splits.items()}
                           for d, splits in sources.items()}}
    if provenance:  # absent, the key stays what it was before provenance existed
        content["provenance"] = provenance
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def changes_between(old: dict, tokenizer: dict, sources: dict) -> list[str]:
    """What makes an existing store's manifest differ from these inputs, in words."""
    found = []
    if old.get("tokenizer", {}).get("sha256") != tokenizer["sha256"]:
        found.append(f"the tokenizer changed ({old.get('tokenizer', {}).get('name')} → {tokenizer['name']})")
    before = {d: {s: e.get("sources", []) for s, e in splits.items()} for d, splits in old.get("domains", {}).items()}
    for domain in sorted(set(before) | set(sources)):
        if domain not in sources or domain not in before:
            found.append(f"domain {domain!r} {'removed' if domain not in sources else 'added'}")
            continue
        for split in SPLITS:
            was = {f["path"]: f["sha256"] for f in before[domain].get(split, [])}
            now = {f["path"]: f["sha256"] for f in sources[domain][split]}
            found += [f"{domain}/{split}: {path} {'added' if path not in was else 'removed' if path not in now else 'changed'}"
                      for path in sorted(set(was) | set(now)) if was.get(path) != now.get(path)]
    return found or ["the store's settings changed (format, piece size or document limit)"]


# ---- the worker: one piece → its shards, its counts and its documents' digests ----

_TOKENIZER = None


def _start_worker(definition: str, threads: int) -> None:
    global _TOKENIZER
    os.environ["RAYON_NUM_THREADS"] = str(threads)  # the tokenizer's own threads, set before its first use
    from tokenizers import Tokenizer

    _TOKENIZER = Tokenizer.from_str(definition)


def _encode(texts: list[str]) -> list[list[int]]:
    encode = getattr(_TOKENIZER, "encode_batch_fast", _TOKENIZER.encode_batch)  # fast: no offsets
    return [e.ids for e in encode(texts, add_special_tokens=False)]


def tokenize_piece(task: tuple) -> tuple[tuple, dict]:
    """Tokenize one piece into ``<folder>/<index>.tokens`` and ``.docs`` (each renamed into place
    whole) and record its counts last, so a piece with counts is finished."""
    (domain, split, index), piece, folder, eos, dtype, max_tokens = task
    folder = Path(folder)
    counts = dict.fromkeys(COUNTS, 0)
    digests: list[int] = []
    tokens_tmp, docs_tmp = folder / f".{index:05d}.tokens.tmp", folder / f".{index:05d}.docs.tmp"
    with open(tokens_tmp, "wb") as tokens_out, open(docs_tmp, "wb") as docs_out:
        batch: list[str] = []

        def flush():
            flat, starts = [], []
            for ids in _encode(batch):
                starts.append(counts["tokens"] + len(flat))
                flat.append(eos)
                flat += ids
                counts["overlong_documents"] += len(ids) > max_tokens
            tokens_out.write(np.asarray(flat, dtype=dtype).tobytes())
            docs_out.write(np.asarray(starts, dtype=np.uint32).tobytes())
            counts["tokens"] += len(flat)
            counts["documents"] += len(batch)
            batch.clear()

        for doc in corpus.documents(piece):
            if doc.text is None:
                counts["invalid_utf8_documents"] += 1
            elif not doc.text.strip():
                counts["empty_documents"] += 1
            else:
                batch.append(doc.text)
                digests.append(int.from_bytes(hashlib.blake2b(doc.text.encode(), digest_size=8).digest(), "little"))
                if len(batch) == _BATCH:
                    flush()
        if batch:
            flush()
        for fh in (tokens_out, docs_out):  # on disk before the rename publishes them
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tokens_tmp, folder / f"{index:05d}.tokens")
    os.replace(docs_tmp, folder / f"{index:05d}.docs")
    np.save(folder / f".{index:05d}.digests.npy", np.asarray(digests, dtype=np.uint64))
    write_atomic_text(folder / f".{index:05d}.json", json.dumps(counts))
    return (domain, split, index), counts


# ---- the parent ----

def _tasks(corpora: dict, partial: Path, eos: int, dtype: np.dtype, max_tokens: int):
    """Every piece: (those already finished in ``partial`` with their counts, those to do)."""
    done, todo = {}, []
    for domain, splits in corpora.items():
        for split in SPLITS:
            folder = partial / domain / split
            folder.mkdir(parents=True, exist_ok=True)
            for index, piece in enumerate(corpus.pieces(splits[split])):
                finished = folder / f".{index:05d}.json"
                if finished.is_file():
                    done[(domain, split, index)] = json.loads(finished.read_text())
                else:
                    todo.append(((domain, split, index), piece, str(folder), eos, dtype.str, max_tokens))
    return done, todo


def _run_pool(todo: list, definition: str, workers: int, progress_stream) -> dict:
    from tqdm.auto import tqdm

    results = {}
    workers = max(1, min(workers, len(todo)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    bar = tqdm(total=sum(t[1].size for t in todo), unit="B", unit_scale=True, desc="tokenizing",
               file=progress_stream, mininterval=1.0)
    started, tokens = time.perf_counter(), 0
    # Spawned, not forked: a fork of a process that already runs threads (torch, MLflow, the
    # tokenizer's own) can deadlock in the child. Spawning re-imports the caller's __main__, so a
    # script calling prepare needs the usual `if __name__ == "__main__":` guard.
    # Largest pieces first, results as they finish: the last pieces are the small ones, so no core
    # waits long on another's big piece at the end (the pieces' bytes do not depend on the order).
    todo = sorted(todo, key=lambda task: -task[1].size)
    sizes = {task[0]: task[1].size for task in todo}
    with multiprocessing.get_context("spawn").Pool(workers, _start_worker, (definition, threads)) as pool:
        for key, counts in pool.imap_unordered(tokenize_piece, todo):
            results[key] = counts
            tokens += counts["tokens"]
            bar.update(sizes[key])
            bar.set_postfix_str(f"{tokens / (time.perf_counter() - started) / 1e6:.2f}M tok/s", refresh=False)
    bar.close()
    return results


def _split_entry(partial: Path, domain: str, split: str, counts: list[dict], sources: list[dict]) -> dict:
    folder = partial / domain / split
    digests = [np.load(folder / f".{i:05d}.digests.npy") for i in range(len(counts))]
    digests = np.concatenate(digests) if digests else np.zeros(0, dtype=np.uint64)
    entry = {k: sum(c[k] for c in counts) for k in COUNTS}
    entry["duplicate_documents"] = int(len(digests) - len(np.unique(digests)))
    entry["sources"] = sources
    entry["shards"] = [{"tokens": f"{domain}/{split}/{i:05d}.tokens", "docs": f"{domain}/{split}/{i:05d}.docs",
                        "n_tokens": c["tokens"], "n_documents": c["documents"]} for i, c in enumerate(counts)]
    return entry


def _publish(partial: Path, out: Path) -> None:
    """The bookkeeping files out, then the partial folder renamed to the store in one step."""
    for path in partial.rglob(".*"):
        path.unlink()
    swap_folder(partial, out)


def prepare(corpora: dict[str, dict[str, list[Path]]], tokenizer, out: Path | None = None, *, root: Path | None = None,
            workers: int | None = None, max_document_tokens: int = MAX_DOCUMENT_TOKENS, progress_stream=None,
            provenance: dict | None = None) -> Prepared:
    """Make (or find) the token store of ``corpora`` ({domain: {"train": paths, "validation":
    paths}}) tokenized by ``tokenizer`` at ``out``, or when no ``out`` is given at ``root/<key>``
    (content-addressed: the same inputs find the same store). ``provenance`` (e.g. the fingerprint of
    the classifier that labelled the corpora) goes into the manifest and the key. Bad input
    (``InputError``) names the file, domain or tokenizer at fault."""
    started = time.perf_counter()
    meta = tokenizer_fingerprint(tokenizer)
    dtype = token_dtype(meta["vocab_size"])
    sources = {d: {s: corpus.fingerprint(list(splits.get(s) or [])) if splits.get(s) else [] for s in SPLITS}
               for d, splits in corpora.items()}
    for domain, splits in sources.items():
        for split in SPLITS:
            if not splits[split]:
                raise InputError(f"domain {domain!r} has no {split} corpus: give it a file or folder")
    key = store_key(meta, sources, max_document_tokens, provenance)
    out = Path(out) if out is not None else Path(root) / key[:16]
    old = json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).is_file() else None
    if old is not None and old.get("key") == key:
        return Prepared(out, key, old, up_to_date=True, seconds=time.perf_counter() - started)
    changes = changes_between(old, meta, sources) if old is not None else []
    if old is not None and old.get("provenance") != provenance:  # e.g. labelled by another classifier
        changes = [c for c in changes if not c.startswith("the store's settings")]
        changes.insert(0, f"the provenance changed ({old.get('provenance')} → {provenance})")

    partial = out.parent / f".{out.name}.partial-{key[:16]}"
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        if stale != partial:  # a killed run of other inputs: its pieces are of no use now
            shutil.rmtree(stale, ignore_errors=True)
    done, todo = _tasks({d: {s: list(map(Path, corpora[d][s])) for s in SPLITS} for d in corpora}, partial,
                        meta["eos_id"], dtype, max_document_tokens)
    tokenizing = time.perf_counter()
    fresh = _run_pool(todo, tokenizer.backend_tokenizer.to_str(), workers or os.cpu_count() or 1,
                      progress_stream) if todo else {}
    done.update(fresh)
    tokens_per_s = sum(c["tokens"] for c in fresh.values()) / max(time.perf_counter() - tokenizing, 1e-9)

    domains = {}
    for domain in sorted(corpora):
        domains[domain] = {}
        for split in SPLITS:
            counts = [done[k] for k in sorted(k for k in done if k[:2] == (domain, split))]
            entry = _split_entry(partial, domain, split, counts, sources[domain][split])
            if entry["tokens"] == 0:
                raise InputError(f"domain {domain!r}: its {split} corpus ({', '.join(f['path'] for f in sources[domain][split])}) "
                                 "holds no document with text; add documents or drop the domain")
            domains[domain][split] = entry
    manifest = {"format": FORMAT, "version": VERSION, "key": key, "tokenizer": meta, "dtype": dtype.name,
                "separator": "end-of-text before every document", "max_document_tokens": max_document_tokens,
                "domains": domains, **({"provenance": provenance} if provenance else {})}
    write_atomic_text(partial / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    _publish(partial, out)
    return Prepared(out, key, manifest, up_to_date=False, changes=changes, seconds=time.perf_counter() - started,
                    tokens_per_s=tokens_per_s)
