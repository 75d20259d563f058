"""The stored teacher signal on disk: its format, its quantiser and its reader (docs/teacher-signal.md).

One folder, beside the token store it was computed from::

    manifest.json                written last: a folder without it is no signal
    <domain>/<part>.ids          top-k (or sampled) ids, little-endian, ID_BYTES of them each
    <domain>/<part>.lp           the matching log-probabilities, two 4-bit codes a byte

A part is ``part_blocks`` consecutive training blocks of the store (block i of a domain is its tokens
[i·(block+1), (i+1)·(block+1)), the rows the DDK sampler draws), each ``block`` positions of ``m``
entries: the sampler's (domain, block index) finds a row's target with one positioned read per file.

Ids take 2 bytes when the vocabulary has at most 65,536 entries (GPT-2's 50,257), 3 up to 2^24
(Qwen2's 151,646), else 4. Log-probabilities are sorted descending at each position, so they are
stored as 4-bit codes of the decrement from the previous one, from a fixed table of 16 decrements
(``DECREMENTS``; the first entry's drop from 0 from ``FIRST``), with error feedback: each code is chosen against the value reconstructed so far,
so the error does not accumulate down the ranks. The top-k tail mass is not stored: it is what the
decoded entries leave of 1. At k = 64 and GPT-2's vocabulary that is 64·2 + 32 = 160 bytes a
position; 12 sampled ids, 30 (the errors measured: docs/teacher-signal.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from distiller.errors import InputError
from distiller.sparse_losses import SparseTarget

FORMAT = "kdh-teacher-signal"
VERSION = 1
MANIFEST = "manifest.json"
MODES = ("top-k", "sampled")
# nats: fine steps where sorted log-probs sit close together (past the first few ranks), coarse ones
# for the first drops of a peaked distribution.
DECREMENTS = np.array([0, 1 / 32, 1 / 16, 3 / 32, 1 / 8, 3 / 16, 1 / 4, 3 / 8, 1 / 2, 3 / 4, 1, 3 / 2, 2, 3, 4.5, 7],
                      dtype=np.float64)
# The first entry is coded absolutely (its drop from 0), from a table of its own: it carries the most mass,
# and a top log-prob lies anywhere in [-6, 0], where DECREMENTS is coarse; steps of 0.4 nats keep it within
# ±0.2 (docs/teacher-signal.md has the measured errors).
FIRST = 0.4 * np.arange(16, dtype=np.float64)
_MIDPOINTS = (DECREMENTS[1:] + DECREMENTS[:-1]) / 2
_FIRST_MIDPOINTS = (FIRST[1:] + FIRST[:-1]) / 2


def id_bytes(vocab_size: int) -> int:
    return 2 if vocab_size <= 1 << 16 else 3 if vocab_size <= 1 << 24 else 4


def pack_ids(ids: np.ndarray, width: int) -> np.ndarray:
    """Ids [..., m] → uint8 [..., m·width], little-endian, ``width`` bytes each."""
    raw = np.ascontiguousarray(ids, dtype="<u4").view(np.uint8).reshape(*ids.shape, 4)
    return raw[..., :width].reshape(*ids.shape[:-1], -1)


def unpack_ids(raw: np.ndarray, width: int) -> np.ndarray:
    wide = np.zeros((*raw.shape[:-1], raw.shape[-1] // width, 4), dtype=np.uint8)
    wide[..., :width] = raw.reshape(*raw.shape[:-1], -1, width)
    return wide.view("<u4")[..., 0].astype(np.int64)


def encode_log_probs(log_probs: np.ndarray) -> np.ndarray:
    """Sorted-descending log-probs [N, m] → 4-bit codes packed two a byte, uint8 [N, ceil(m/2)]."""
    n, m = log_probs.shape
    codes = np.zeros((n, m + m % 2), dtype=np.uint8)
    reconstructed = np.zeros(n)
    for j in range(m):  # error feedback: aim at the true value from where the decoder will be
        want = np.maximum(reconstructed - log_probs[:, j], 0.0)
        table, midpoints = (FIRST, _FIRST_MIDPOINTS) if j == 0 else (DECREMENTS, _MIDPOINTS)
        codes[:, j] = np.searchsorted(midpoints, want)
        reconstructed -= table[codes[:, j]]
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def decode_log_probs(packed: np.ndarray, m: int) -> np.ndarray:
    codes = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)[..., :m]
    drops = DECREMENTS[codes]
    drops[..., 0] = FIRST[codes[..., 0]]
    return -np.cumsum(drops, axis=-1)


def target_of(ids: np.ndarray, log_probs: np.ndarray, mode: str) -> SparseTarget:
    """The loss's target from decoded entries. Top-k: each entry weighs its probability and the tail
    is what they leave of 1 (scaled down to sum to 1 where quantisation overshoots); sampled: each
    draw weighs 1/N and there is no tail."""
    lp = torch.from_numpy(log_probs).float()
    if mode == "sampled":
        weights = torch.full_like(lp, 1.0 / lp.shape[-1])
        tail = torch.zeros(lp.shape[:-1])
    else:
        weights = lp.exp()
        total = weights.sum(-1)
        weights = weights / total.clamp_min(1.0).unsqueeze(-1)
        tail = (1 - total).clamp_min(0.0)
    return SparseTarget(torch.from_numpy(ids), weights, lp, tail)


def part_files(root: Path, domain: str, part: int) -> tuple[Path, Path]:
    return root / domain / f"{part:05d}.ids", root / domain / f"{part:05d}.lp"


class TeacherSignal:
    """A stored signal, opened read-only: bad input when it is not whole (no manifest, a part missing
    or shorter than the manifest says)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise InputError(f"{self.root} is not a teacher signal (no {MANIFEST}; one being computed or killed midway "
                             "has none): run `kdh teacher-signal` to make or finish it")
        try:
            self.manifest = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: not valid JSON ({err.msg}); compute the signal again") from None
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise InputError(f"{path}: format {self.manifest.get('format')!r} version {self.manifest.get('version')!r}, "
                             f"kdh reads {FORMAT!r} version {VERSION}; compute the signal again with this kdh")
        self.identity = self.manifest["identity"]
        self.block, self.m, self.width = self.identity["block"], self.manifest["entries"], self.manifest["id_bytes"]
        self.part_blocks = self.manifest["part_blocks"]
        self._check_files()

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def mode(self) -> str:
        return self.identity["mode"]

    @property
    def teacher_perplexity(self) -> dict[str, float]:
        return self.manifest["teacher_perplexity"]

    def block_bytes(self) -> tuple[int, int]:
        """(ids, log-prob) bytes of one block."""
        return self.block * self.m * self.width, self.block * ((self.m + 1) // 2)

    def _check_files(self) -> None:
        ids_size, lp_size = self.block_bytes()
        for domain, entry in self.manifest["domains"].items():
            for part, count in enumerate(entry["part_sizes"]):
                for path, size in zip(part_files(self.root, domain, part), (ids_size, lp_size)):
                    have = path.stat().st_size if path.is_file() else None
                    if have != count * size:
                        raise InputError(f"the teacher signal {self.root} is truncated: {path} has "
                                         f"{'no file' if have is None else f'{have} bytes'}, the manifest says "
                                         f"{count * size}; compute it again (`kdh teacher-signal`)")

    def check(self, expected: dict) -> None:
        """Bad input unless every field of ``expected`` (teacher, store, block, temperature, …) is the
        signal's: a signal of another teacher, corpus or setting would train toward the wrong target."""
        wrong = [f"{k}: the signal has {self.identity.get(k)!r}, this run {v!r}" for k, v in expected.items()
                 if self.identity.get(k) != v]
        if wrong:
            raise InputError(f"the teacher signal {self.root} (fingerprint {self.fingerprint[:12]}) does not match "
                             f"this run: {'; '.join(wrong)}. Compute a signal for it (`kdh teacher-signal`)")

    def read(self, domain: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Block ``index`` of ``domain``: (ids [block, m], log-probs [block, m]), decoded."""
        blocks = self.manifest["domains"].get(domain, {}).get("blocks", 0)
        if not 0 <= index < blocks:
            raise InputError(f"the teacher signal {self.root} has {blocks} blocks of domain {domain!r}, not block "
                             f"{index}: it was computed from another store or block size")
        part, offset = divmod(index, self.part_blocks)
        out = []
        for path, size in zip(part_files(self.root, domain, part), self.block_bytes()):
            with open(path, "rb", buffering=0) as fh:
                out.append(np.frombuffer(os.pread(fh.fileno(), size, offset * size), dtype=np.uint8))
        ids = unpack_ids(out[0].reshape(self.block, -1), self.width)
        return ids, decode_log_probs(out[1].reshape(self.block, -1), self.m)

    def batch(self, picks: list[tuple[str, int]]) -> SparseTarget:
        """The target of the sampler's rows, [B, block, m]."""
        read = [self.read(d, i) for d, i in picks]
        return target_of(np.stack([r[0] for r in read]), np.stack([r[1] for r in read]), self.mode)
