"""Where a run's training rows and DDK's measurements come from, behind one small record.

``DomainData`` is all the training loop asks of its data: each domain's sampler rows, and a
``measure(model, tokenizer)`` that gives the per-domain loss DDK compares between student and
teacher (perplexity on one vocabulary, bits per byte across two). ``domain_data`` builds it from
each domain's JSON Lines files (train, validation):

- one tokenizer: the text packed into blocks of ``block + 1`` tokens (data.pack_blocks), validation
  perplexity on the first ``val_blocks`` validation blocks;
- two tokenizers: rows holding both tokenizations of one text (distiller/pairs.py), validation bits
  per byte on as much text as ``val_blocks`` student blocks hold, roughly (4 characters per token).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from distiller.data import pack_blocks, read_texts
from distiller.measure import domain_bits_per_byte, domain_perplexities, text_pieces
from distiller.pairs import pack_pairs, pair_rows

log = logging.getLogger(__name__)


@dataclass
class DomainData:
    rows: dict[str, torch.Tensor]  # the sampler's rows per domain, one width for all
    measure: Callable[[torch.nn.Module, object], dict[str, float]]  # (model, its tokenizer) → per domain
    ratio_of: str  # what the measurements are: "perplexity", or "bits per byte" across tokenizers

    @property
    def natural(self) -> dict[str, float]:
        """Each domain's share of the training rows (the corpus's own mixture)."""
        total = sum(rows.numel() for rows in self.rows.values())
        return {d: rows.numel() / total for d, rows in self.rows.items()}


def domain_data(domains: dict[str, tuple[Path, Path]], tokenizer, teacher_tokenizer, *, same_vocab: bool,
                block: int, teacher_context: int, val_blocks: int, accelerator, chunk_size: int) -> DomainData:
    """``domains``: name → (train file, validation file), JSON Lines of {"text"}."""
    texts = {d: (read_texts(train), read_texts(validation)) for d, (train, validation) in domains.items()}
    if same_vocab:
        eos = tokenizer.eos_token_id
        rows = {d: pack_blocks(t, tokenizer, block, eos, domain=d) for d, (t, _) in texts.items()}
        val = {d: pack_blocks(v, tokenizer, block, eos, domain=d)[:val_blocks] for d, (_, v) in texts.items()}

        def perplexity(model, _tokenizer):
            return domain_perplexities(model, val, accelerator, chunk_size)

        return DomainData(rows, perplexity, "perplexity")

    pairs = {d: pack_pairs(t, tokenizer, teacher_tokenizer, block, domain=d) for d, (t, _) in texts.items()}
    rows, cut = pair_rows(pairs, teacher_context)
    if cut:
        log.warning("%d teacher sequences were longer than the teacher's context and were cut", cut)
    pieces = {d: text_pieces(v, 4 * block, val_blocks) for d, (_, v) in texts.items()}

    def bits_per_byte(model, model_tokenizer):
        return domain_bits_per_byte(model, model_tokenizer, pieces, block, accelerator, chunk_size)

    return DomainData(rows, bits_per_byte, "bits per byte")
