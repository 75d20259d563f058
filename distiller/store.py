"""The token store: a prepared corpus the distiller reads without holding it (docs/token-store.md).

On disk, one folder::

    manifest.json                       written last: a folder without it is no store
    <domain>/<split>/<piece>.tokens     raw token ids, uint16 when the vocabulary fits, else uint32
    <domain>/<split>/<piece>.docs       uint32: where each document starts in that piece's tokens

Each split (train, validation) of a domain is one token stream, its pieces in order, built as GPT
pretraining packs text: the end-of-text id before every document. Cutting that stream into blocks of
``block + 1`` tokens gives the same rows the in-memory packing gave. Blocks are read with positioned
reads (``os.pread``) rather than through a long-lived ``np.memmap``: the pages of a memory map stay
counted in the reader's resident memory as the sampler touches them, which over a 1B-token corpus
grows without bound; a positioned read costs one system call and leaves caching to the OS.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distiller.errors import InputError

FORMAT = "kdh-token-store"
VERSION = 1
SPLITS = ("train", "validation")
MANIFEST = "manifest.json"


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest id type: 2 bytes a token for vocabularies up to 65,536."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def tokenizer_fingerprint(tokenizer) -> dict:
    """What identifies a tokenizer for the store: the digest of its whole definition (normaliser,
    pre-tokeniser, vocabulary, merges, special tokens), its size and its end-of-text id."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InputError(f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} is not a fast (Rust) tokenizer; "
                         "the token store needs one (a folder with tokenizer.json, or vocab and merges files)")
    if tokenizer.eos_token_id is None:
        raise InputError(f"the tokenizer {tokenizer.name_or_path!r} has no end-of-text token; the store separates "
                         "documents with it")
    definition = backend.to_str()
    return {"sha256": hashlib.sha256(definition.encode()).hexdigest(), "vocab_size": len(tokenizer),
            "eos_id": int(tokenizer.eos_token_id), "name": Path(str(tokenizer.name_or_path)).name}


@dataclass
class Shard:
    tokens: Path
    docs: Path
    n_tokens: int
    n_documents: int


class TokenStream:
    """One split of one domain: its shards read as one stream of token ids."""

    def __init__(self, shards: list[Shard], dtype: np.dtype):
        self.shards = shards
        self.dtype = dtype
        self.starts = [0]  # where each shard begins in the stream
        for shard in shards:
            self.starts.append(self.starts[-1] + shard.n_tokens)

    def __len__(self) -> int:
        return self.starts[-1]

    @property
    def documents(self) -> int:
        return sum(s.n_documents for s in self.shards)

    def read(self, start: int, count: int) -> np.ndarray:
        """Tokens [start, start + count) of the stream, across shard ends where a read spans them."""
        if start < 0 or start + count > len(self):
            raise IndexError(f"tokens [{start}, {start + count}) outside a stream of {len(self)}")
        out = np.empty(count, dtype=self.dtype)
        done, size = 0, self.dtype.itemsize
        shard = bisect.bisect_right(self.starts, start) - 1
        while done < count:
            offset = start + done - self.starts[shard]
            take = min(count - done, self.shards[shard].n_tokens - offset)
            with open(self.shards[shard].tokens, "rb", buffering=0) as fh:
                data = os.pread(fh.fileno(), take * size, offset * size)
            out[done:done + take] = np.frombuffer(data, dtype=self.dtype)
            done, shard = done + take, shard + 1
        return out

    def chunks(self, size: int = 1 << 24):
        """The whole stream as consecutive arrays of at most ``size`` tokens (for scans)."""
        for start in range(0, len(self), size):
            yield self.read(start, min(size, len(self) - start))

    def document_starts(self) -> np.ndarray:
        """Where every document (its end-of-text separator) starts in the stream."""
        parts = [np.fromfile(s.docs, dtype=np.uint32).astype(np.int64) + begin
                 for s, begin in zip(self.shards, self.starts)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class TokenStore:
    """A prepared store, opened read-only; bad input when the folder is not a whole store."""

    def __init__(self, root: Path):
        self.root = Path(root)
        manifest = self.root / MANIFEST
        if not manifest.is_file():
            raise InputError(f"{self.root} is not a token store (no {MANIFEST}; a store being prepared or "
                             "killed midway has none): run `kdh prepare` to make or finish it")
        try:
            self.manifest = json.loads(manifest.read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"{manifest}: not valid JSON ({err.msg}); prepare the store again") from None
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise InputError(f"{manifest}: format {self.manifest.get('format')!r} version "
                             f"{self.manifest.get('version')!r}, kdh reads {FORMAT!r} version {VERSION}; "
                             "prepare the store again with this kdh")
        self.dtype = np.dtype(self.manifest["dtype"])

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def domains(self) -> list[str]:
        return sorted(self.manifest["domains"])

    @property
    def tokenizer(self) -> dict:
        return self.manifest["tokenizer"]

    def stream(self, domain: str, split: str) -> TokenStream:
        if domain not in self.manifest["domains"]:
            raise InputError(f"the token store {self.root} has no domain {domain!r} (it has {', '.join(self.domains)}); "
                             "prepare it from a corpus that covers the suite's domains")
        shards = [Shard(self.root / s["tokens"], self.root / s["docs"], s["n_tokens"], s["n_documents"])
                  for s in self.manifest["domains"][domain][split]["shards"]]
        return TokenStream(shards, self.dtype)

    def summary(self) -> dict:
        """{domain: {split: counts}}: documents, tokens and the corpus checks' counts."""
        return {d: {split: {k: v for k, v in entry.items() if k not in ("shards", "sources")}
                    for split, entry in splits.items()} for d, splits in self.manifest["domains"].items()}

    def check_tokenizer(self, tokenizer, role: str = "student") -> None:
        """Bad input unless ``tokenizer`` is the one the store was prepared with."""
        mine = tokenizer_fingerprint(tokenizer)
        if mine["sha256"] != self.tokenizer["sha256"]:
            raise InputError(f"the token store {self.root} was prepared with the tokenizer "
                             f"{self.tokenizer['name']!r} ({self.tokenizer['sha256'][:12]}), not the {role}'s "
                             f"{mine['name']!r} ({mine['sha256'][:12]}): prepare a store with the {role}'s tokenizer")


class Blocks:
    """The stream cut into non-overlapping rows of ``width`` tokens (the ragged tail dropped), read on
    demand: ``len(blocks)`` rows, ``blocks[i]`` a LongTensor — what the DDK sampler draws from."""

    def __init__(self, stream: TokenStream, width: int, limit: int | None = None):
        self.stream, self.width = stream, width
        self.n = len(stream) // width if limit is None else min(limit, len(stream) // width)

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.width)

    def __getitem__(self, index: int):
        import torch

        if not 0 <= index < self.n:
            raise IndexError(f"block {index} of {self.n}")
        return torch.from_numpy(self.stream.read(index * self.width, self.width).astype(np.int64))
