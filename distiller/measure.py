"""What DDK measures every K steps: each domain's validation loss, per token or per byte.

One tokenizer: perplexity per domain, exp(mean token cross-entropy) on validation blocks, the
paper's ℓ. Two tokenizers: perplexity per token does not compare (longer tokens, fewer and harder
predictions), bits per UTF-8 byte does (the same bytes, each model predicting them with its own
tokens), so DDK's ratio across tokenizers is bpb_S / bpb_T, which is also what the harness's
retention means for a bits-per-byte slice (teacher/student) (docs/distillation.md).

The work is shared out over the ranks and the sums reduced, so every rank gets the same numbers and
samples with the same weights.
"""

from __future__ import annotations

import math

import torch

from distiller.data import fast_backend
from distiller.losses import distillation_loss


def last_hidden(model, input_ids):
    """The final (normed) hidden states; logits_to_keep=1 keeps the forward from building the full
    B×T×V logits, which the chunked loss makes one chunk at a time instead."""
    return model(input_ids=input_ids, logits_to_keep=1, output_hidden_states=True).hidden_states[-1]


@torch.no_grad()
def domain_perplexities(model, blocks: dict[str, torch.Tensor], accelerator, chunk_size: int, batch_size: int = 8):
    """exp(mean token cross-entropy) per domain on its validation blocks; the blocks are shared out
    over the ranks and the sums reduced, so every rank gets the same numbers."""
    was_training = model.training
    model.eval()
    head = accelerator.unwrap_model(model).get_output_embeddings()
    sums = torch.zeros(len(blocks), 2, dtype=torch.float64, device=accelerator.device)
    for i, rows in enumerate(blocks.values()):
        mine = rows[accelerator.process_index :: accelerator.num_processes].to(accelerator.device)
        for start in range(0, len(mine), batch_size):
            batch = mine[start : start + batch_size]
            hidden = last_hidden(model, batch[:, :-1])
            _, ce, _ = distillation_loss(hidden, head, None, None, batch[:, 1:], kd_weight=0.0, chunk_size=chunk_size)
            sums[i, 0] += ce.double() * batch[:, 1:].numel()
            sums[i, 1] += batch[:, 1:].numel()
    sums = accelerator.reduce(sums, reduction="sum")
    model.train(was_training)
    return {name: math.exp(sums[i, 0].item() / sums[i, 1].item()) for i, name in enumerate(blocks)}


def text_pieces(texts: list[str], max_chars: int, count: int) -> list[str]:
    """The first ``count`` pieces of at most ``max_chars`` characters, in document order: the same
    text for both models whatever their tokenizers."""
    pieces = []
    for text in texts:
        for start in range(0, len(text), max_chars):
            if len(pieces) == count:
                return pieces
            pieces.append(text[start:start + max_chars])
    return pieces


def _windows(ids: list[int], context: int) -> list[tuple[list[int], int]]:
    """lm-eval's rolling windows: every token after the first predicted once, each window seeing as
    much of what comes before as fits. (inputs, how many of the last positions are scored)."""
    out = []
    for start in range(1, len(ids), context):
        end = min(start + context, len(ids))
        out.append((ids[max(0, end - 1 - context):end], end - start))
    return out


@torch.no_grad()
def domain_bits_per_byte(model, tokenizer, pieces: dict[str, list[str]], context: int, accelerator,
                         chunk_size: int, batch_size: int = 8) -> dict[str, float]:
    """Bits per UTF-8 byte per domain: Σ −log₂ p(token) over every token of every piece (the first
    predicted from EOS) ÷ the pieces' bytes. Windows are shared out over the ranks, sums reduced."""
    was_training = model.training
    model.eval()
    head = accelerator.unwrap_model(model).get_output_embeddings()
    eos = tokenizer.eos_token_id
    sums = torch.zeros(len(pieces), dtype=torch.float64, device=accelerator.device)
    for d, texts in enumerate(pieces.values()):
        encoded = fast_backend(tokenizer, "model").encode_batch(texts, add_special_tokens=False)
        windows = [w for e in encoded for w in _windows([eos, *e.ids], context)]
        mine = windows[accelerator.process_index::accelerator.num_processes]
        for start in range(0, len(mine), batch_size):
            batch = mine[start:start + batch_size]
            length = max(len(ids) for ids, _ in batch) - 1
            inputs = torch.full((len(batch), length), eos, dtype=torch.long)
            labels = torch.full((len(batch), length), -100, dtype=torch.long)
            for row, (ids, scored) in enumerate(batch):
                inputs[row, :len(ids) - 1] = torch.tensor(ids[:-1])
                labels[row, len(ids) - 1 - scored:len(ids) - 1] = torch.tensor(ids[-scored:])
            inputs, labels = inputs.to(accelerator.device), labels.to(accelerator.device)
            hidden = last_hidden(model, inputs)
            _, ce, _ = distillation_loss(hidden, head, None, None, labels, kd_weight=0.0, chunk_size=chunk_size)
            sums[d] += ce.double() * (labels != -100).sum()
    sums = accelerator.reduce(sums, reduction="sum")
    model.train(was_training)
    return {name: sums[d].item() / math.log(2) / sum(len(t.encode("utf-8")) for t in texts)
            for d, (name, texts) in enumerate(pieces.items())}
