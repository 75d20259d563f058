"""Where a run's training rows and DDK's measurements come from, behind one small record.

``DomainData`` is all the training loop asks of its data: each domain's sampler rows, and a
``measure(model, tokenizer)`` that gives the per-domain loss DDK compares between student and
teacher (perplexity on one vocabulary, bits per byte across two). ``domain_data`` builds it from a
token store (distiller/store.py) prepared with the student's tokenizer; the rows are read from disk
when the sampler draws them, so a run's memory does not grow with its corpus:

- one tokenizer: the train stream cut into blocks of ``block + 1`` tokens, validation perplexity on
  the first ``val_blocks`` validation blocks;
- two tokenizers: rows holding both tokenizations of one block's text (distiller/pairs.py),
  validation bits per byte on as much text as ``val_blocks`` student blocks hold, roughly (4
  characters per token), decoded from the validation stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from distiller.data import count_blocks
from distiller.measure import domain_bits_per_byte, domain_perplexities, text_pieces
from distiller.pairs import PairedBlocks, collate
from distiller.store import Blocks, TokenStore, TokenStream


@dataclass
class DomainData:
    rows: dict[str, object]  # the sampler's rows per domain: len(), rows[i] → LongTensor, .shape
    measure: Callable[[torch.nn.Module, object], dict[str, float]]  # (model, its tokenizer) → per domain
    ratio_of: str  # what the measurements are: "perplexity", or "bits per byte" across tokenizers
    collate: Callable[[list[torch.Tensor]], torch.Tensor] = torch.stack  # a batch from drawn rows

    @property
    def natural(self) -> dict[str, float]:
        """Each domain's share of the training rows (the corpus's own mixture)."""
        total = sum(len(rows) for rows in self.rows.values())
        return {d: len(rows) / total for d, rows in self.rows.items()}


def _blocks(stream: TokenStream, block: int, domain: str, limit: int | None = None) -> Blocks:
    count_blocks(len(stream), block, stream.documents, domain)  # at least one block, or a clear error
    return Blocks(stream, block + 1, limit)


def documents_text(stream: TokenStream, tokenizer, chars: int) -> list[str]:
    """The first documents of a stream decoded back to text, until ``chars`` characters are there."""
    starts = [int(s) for s in stream.document_starts()] + [len(stream)]
    texts, total = [], 0
    for start, end in zip(starts, starts[1:]):
        if total >= chars:
            break
        ids = stream.read(start + 1, end - start - 1).tolist()  # without the end-of-text before it
        texts.append(tokenizer.decode(ids, clean_up_tokenization_spaces=False))
        total += len(texts[-1])
    return texts


def domain_data(store: TokenStore, domains: list[str], tokenizer, teacher_tokenizer, *, same_vocab: bool,
                block: int, teacher_context: int, val_blocks: int, accelerator, chunk_size: int) -> DomainData:
    """The rows and measurements of ``domains`` from ``store`` (prepared with ``tokenizer``)."""
    store.check_tokenizer(tokenizer, "student")
    train = {d: _blocks(store.stream(d, "train"), block, d) for d in domains}
    validation = {d: store.stream(d, "validation") for d in domains}
    if same_vocab:
        val = {d: torch.stack(list(_blocks(v, block, d, val_blocks))) for d, v in validation.items()}

        def perplexity(model, _tokenizer):
            return domain_perplexities(model, val, accelerator, chunk_size)

        return DomainData(train, perplexity, "perplexity")

    rows = {d: PairedBlocks(blocks, tokenizer, teacher_tokenizer, teacher_context) for d, blocks in train.items()}
    chars = 4 * block * val_blocks
    pieces = {d: text_pieces(documents_text(v, tokenizer, chars), 4 * block, val_blocks) for d, v in validation.items()}

    def bits_per_byte(model, model_tokenizer):
        return domain_bits_per_byte(model, model_tokenizer, pieces, block, accelerator, chunk_size)

    return DomainData(rows, bits_per_byte, "bits per byte", partial(collate, student_width=block + 1))
