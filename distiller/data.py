"""Domain data for distillation, and the weighted domain sampler DDK draws batches with.

Each domain's train texts become one GPT-style token stream (EOS before every document) cut into
fixed blocks of ``block_size + 1`` tokens: inputs ``block[:-1]``, labels ``block[1:]``. Training
reads them from the token store (distiller/store.py); ``pack_blocks`` packs a small held-out set in
memory the same way (the benches' test sets, and the reference the store is tested against).

The sampler follows the paper (docs/distillation.md, sampling): each row's domain is drawn with the current
DDK weights, and a domain's blocks are read in a shuffled order that starts again, reshuffled, once
the domain is exhausted; the order is computed a position at a time (``Shuffle``), so the sampler's
memory does not grow with the corpus. Every random choice is derived from the seed and a counter, never from a
running generator, so the sampler's whole position is a few integers: a checkpoint stores them as
JSON and a resumed run continues with exactly the same rows.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch

from distiller.errors import InputError


def read_texts(path: Path) -> list[str]:
    """The "text" of each line of a JSON Lines file (the suite's train/validation files)."""
    path = Path(path)
    texts = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise InputError(f"{path}:{number}: expected an object with a string \"text\" field")
            texts.append(row["text"])
    return texts


def fast_backend(tokenizer, role: str):
    """The Rust tokenizer behind a fast HF tokenizer: character offsets and batch encoding."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InputError(f"the {role}'s tokenizer is not a fast (Rust) tokenizer; pairing two tokenizations "
                         "needs character offsets (a tokenizer.json)")
    return backend


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    # A fast HF tokenizer's Rust backend encodes in parallel and does not warn that a whole
    # document is longer than the model window (the wrapper would, once per document).
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch"):
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return list(tokenizer(texts, add_special_tokens=False)["input_ids"])


def pack_blocks(texts: list[str], tokenizer, block_size: int, eos_id: int, *, domain: str = "") -> torch.Tensor:
    """LongTensor [n_blocks, block_size + 1]: the documents joined with ``eos_id`` before each
    (as GPT pretraining does, so every document starts after an EOS), cut into non-overlapping
    blocks; the ragged tail is dropped. ``domain`` only names the data in the error message."""
    if block_size < 1:
        raise InputError(f"block_size must be >= 1, got {block_size}")
    stream: list[int] = []
    for ids in _encode(tokenizer, texts):
        stream.append(eos_id)
        stream.extend(ids)
    width = block_size + 1
    n_blocks = count_blocks(len(stream), block_size, len(texts), domain)
    return torch.tensor(stream[: n_blocks * width], dtype=torch.long).view(n_blocks, width)


def count_blocks(tokens: int, block_size: int, documents: int, domain: str | None = None) -> int:
    """How many whole blocks of ``block_size + 1`` tokens the stream holds; at least one, or a
    clear error."""
    width = block_size + 1
    if tokens // width < 1:
        name = f"domain {domain!r}" if domain else "the data"
        raise InputError(f"{name} has {documents} documents, {tokens} tokens: fewer than one block of "
                         f"{width} (block_size {block_size} + 1); add data or lower the block size")
    return tokens // width


def _derived_seed(*parts) -> int:
    """A 63-bit seed from plain values: stable across processes and Python runs (unlike hash())."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


_MASK64 = (1 << 64) - 1


class Shuffle:
    """A seeded permutation of ``range(n)`` computed one position at a time, in constant memory:
    a ``torch.randperm`` of a domain's rows would hold 8 bytes a row (930 MB for a 15B-token
    domain in blocks of 129), rebuilt every epoch. A four-round Feistel network over the smallest
    power of four ≥ n, cycle-walking (Black & Rogaway 2002): a value at or past ``n`` is put
    through again until it falls inside, which keeps the map a permutation of ``range(n)``; with a
    domain under 4n, about four rounds of walking at most on average (docs/token-store.md)."""

    ROUNDS = 4

    def __init__(self, seed: int, n: int):
        if n < 1:
            raise ValueError(f"a shuffle needs n >= 1, got {n}")
        self.n = n
        self.half = max(1, ((n - 1).bit_length() + 1) // 2)  # bits of each Feistel half
        self.mask = (1 << self.half) - 1
        self.keys = [_derived_seed(seed, "round", r) for r in range(self.ROUNDS)]

    def __len__(self) -> int:
        return self.n

    def _mix(self, key: int, x: int) -> int:
        # splitmix64's finaliser of (x xor key): every output bit depends on every input bit
        z = ((x ^ key) + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return (z ^ (z >> 31)) & self.mask

    def _encrypt(self, x: int) -> int:
        left, right = x >> self.half, x & self.mask
        for key in self.keys:
            left, right = right, left ^ self._mix(key, right)
        return (left << self.half) | right

    def __getitem__(self, position: int) -> int:
        if not 0 <= position < self.n:
            raise IndexError(f"position {position} of a shuffle of {self.n}")
        value = self._encrypt(position)
        while value >= self.n:  # cycle walking: ends, since position's own cycle returns below n
            value = self._encrypt(value)
        return value


def _permutation(seed: int, domain: str, epoch: int, n: int) -> Shuffle:
    return Shuffle(_derived_seed(seed, "perm", domain, epoch), n)


class DomainSampler:
    """Draws each batch row's domain from the current weights, then the next block of that domain
    in a seeded per-domain permutation; when a domain is exhausted it wraps around with a fresh
    permutation (next epoch). Deterministic for a seed; its whole position is a plain-value state
    dict for checkpoints.

    Domains are kept in sorted order, so the draws do not depend on the order a caller built the
    ``blocks`` dict in. Under data parallelism every rank holds the same sampler and the same
    weights (set them from values every rank agrees on, e.g. all-reduced perplexities)."""

    def __init__(self, blocks: Mapping[str, object], weights: Mapping[str, float], seed: int, collate=torch.stack):
        if not blocks:
            raise ValueError("the sampler needs at least one domain")
        shapes = {d: tuple(b.shape) for d, b in blocks.items()}
        if any(len(s) != 2 or s[0] < 1 for s in shapes.values()) or len({s[1:] for s in shapes.values()}) != 1:
            raise ValueError(f"every domain needs a [n_blocks >= 1, block_size + 1] tensor of one width, got {shapes}")
        self.domains = tuple(sorted(blocks))
        self.blocks = {d: blocks[d] for d in self.domains}
        self.seed = int(seed)
        self.collate = collate  # a batch from the drawn rows (paired rows pad theirs: distiller/pairs.py)
        self.batches_drawn = 0  # the draw counter: batch k's domains come from (seed, k)
        self.cursor = {d: 0 for d in self.domains}  # next position in the domain's permutation
        self.epoch = {d: 0 for d in self.domains}  # how many times the domain was read through
        self._counts = {d: 0 for d in self.domains}
        self._perm = {d: _permutation(self.seed, d, 0, len(self.blocks[d])) for d in self.domains}
        self.last_picks: list[tuple[str, int]] = []  # this rank's rows of the last batch drawn
        self.set_weights(weights)

    @property
    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    @property
    def counts(self) -> dict[str, int]:
        """Rows drawn per domain so far, over the global batches (the same on every rank)."""
        return dict(self._counts)

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """The domain probabilities for the draws from now on: same domains, >= 0, sum > 0; normalised."""
        if set(weights) != set(self.domains):
            raise ValueError(f"weights cover {sorted(weights)} but the sampler's domains are {list(self.domains)}")
        values = {d: float(weights[d]) for d in self.domains}
        if any(not (math.isfinite(v) and v >= 0) for v in values.values()) or sum(values.values()) <= 0:
            raise ValueError(f"weights must be finite, >= 0 and sum to more than 0, got {values}")
        total = sum(values.values())
        self._weights = {d: v / total for d, v in values.items()}

    def _draw_domains(self, n: int) -> list[int]:
        """Inverse-CDF draws, uniform numbers from a generator seeded by (seed, batch index)."""
        w = torch.tensor([self._weights[d] for d in self.domains], dtype=torch.float64)
        cdf = torch.cumsum(w, 0)
        cdf = cdf / cdf[-1]  # exactly 1 at the end, so u < 1 never falls past the last domain
        g = torch.Generator().manual_seed(_derived_seed(self.seed, "draw", self.batches_drawn))
        u = torch.rand(n, generator=g, dtype=torch.float64)
        # searchsorted right: domain i owns [cdf[i-1], cdf[i]); a zero-weight domain owns nothing
        return torch.searchsorted(cdf, u, right=True).tolist()

    def _next_block(self, domain: str) -> int:
        if self.cursor[domain] == len(self.blocks[domain]):  # exhausted: next epoch, reshuffled
            self.epoch[domain] += 1
            self.cursor[domain] = 0
            self._perm[domain] = _permutation(self.seed, domain, self.epoch[domain], len(self.blocks[domain]))
        index = self._perm[domain][self.cursor[domain]]
        self.cursor[domain] += 1
        return index

    def next_batch(self, batch_size: int, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, list[str]]:
        """This rank's rows of the next global batch: (blocks [batch_size, block_size + 1], domain
        per row). The global batch of ``batch_size * world_size`` rows is drawn identically on every
        rank and rank r takes rows [r·batch_size, (r+1)·batch_size): the data order does not depend
        on the number of processes, and no two ranks see the same row."""
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        picks = []
        for i in self._draw_domains(batch_size * world_size):
            domain = self.domains[i]
            picks.append((domain, self._next_block(domain)))
            self._counts[domain] += 1
        self.batches_drawn += 1
        mine = picks[rank * batch_size: (rank + 1) * batch_size]
        self.last_picks = mine  # (domain, block index) of each row: where a stored teacher signal keeps its target
        rows = self.collate([self.blocks[d][j] for d, j in mine])
        return rows, [d for d, _ in mine]

    def state_dict(self) -> dict:
        """Plain JSON-able values: the permutations and draws are re-derived from them on load."""
        return {
            "seed": self.seed,
            "batches_drawn": self.batches_drawn,
            "weights": dict(self._weights),
            "domains": {d: {"cursor": self.cursor[d], "epoch": self.epoch[d], "n_blocks": len(self.blocks[d]),
                            "rows_drawn": self._counts[d]} for d in self.domains},
        }

    def load_state_dict(self, state: Mapping) -> None:
        saved = state["domains"]
        if set(saved) != set(self.domains):
            raise InputError(f"the saved sampler has domains {sorted(saved)}, this one {list(self.domains)}")
        changed = {d: (saved[d]["n_blocks"], len(self.blocks[d])) for d in self.domains
                   if saved[d]["n_blocks"] != len(self.blocks[d])}
        if changed:
            raise InputError(f"the data changed since the state was saved (saved, now blocks): {changed}")
        self.seed = int(state["seed"])
        self.batches_drawn = int(state["batches_drawn"])
        self.set_weights(state["weights"])  # validates; then the saved values exactly, not renormalised
        self._weights = {d: float(state["weights"][d]) for d in self.domains}
        for d in self.domains:
            self.cursor[d], self.epoch[d] = int(saved[d]["cursor"]), int(saved[d]["epoch"])
            self._counts[d] = int(saved[d]["rows_drawn"])
            self._perm[d] = _permutation(self.seed, d, self.epoch[d], len(self.blocks[d]))
