"""Rows that carry two tokenizations of one text, for a teacher and a student with different tokenizers.

The student's token stream is cut into blocks exactly as ``data.pack_blocks`` cuts it; the text of
each block (found through the tokenizer's character offsets) is tokenized again by the teacher. One
sampler row holds both: the student's ``block_size + 1`` ids, then the teacher's ids of the same
text, padded with ``PAD`` to one width for every domain. ``DomainSampler`` draws whole rows, so its
seeded order and its resumable state are exactly those of the one-tokenizer loop.
"""

from __future__ import annotations

import torch

from distiller.data import count_blocks, fast_backend
from distiller.errors import InputError

PAD = -1  # a teacher position with no token, in the sampler's rows


def pack_pairs(texts: list[str], student_tokenizer, teacher_tokenizer, block_size: int, *,
               domain: str = "") -> tuple[torch.Tensor, list[list[int]]]:
    """(student blocks [n, block_size + 1] as ``pack_blocks`` makes them, the teacher's ids of each
    block's text). A block's EOS positions become the teacher's EOS; the text between is cut at the
    student's token boundaries and tokenized by the teacher as one piece."""
    s_eos, t_eos = student_tokenizer.eos_token_id, teacher_tokenizer.eos_token_id
    if s_eos is None or t_eos is None:
        raise InputError("both tokenizers need an end-of-text token to separate documents")
    stream: list[int] = []
    spans: list[tuple[int, int, int]] = []  # per token: (document, first char, end char); document -1 for EOS
    encodings = fast_backend(student_tokenizer, "student").encode_batch(texts, add_special_tokens=False)
    for doc, encoding in enumerate(encodings):
        stream.append(s_eos)
        spans.append((-1, 0, 0))
        stream += encoding.ids
        spans += [(doc, start, end) for start, end in encoding.offsets]
    width = block_size + 1
    n_blocks = count_blocks(len(stream), block_size, len(texts), domain)

    # Each block as segments: EOS, or a run of one document's tokens → that document's text.
    blocks: list[list[int | str]] = []
    for b in range(n_blocks):
        segments: list[int | str] = []
        run: list[tuple[int, int, int]] = []
        for doc, start, end in spans[b * width:(b + 1) * width] + [(-1, 0, 0)]:  # a sentinel EOS ends the last run
            if run and doc != run[0][0]:
                segments.append(texts[run[0][0]][run[0][1]:max(e for _, _, e in run)])
                run = []
            if doc == -1:
                segments.append(t_eos)
            else:
                run.append((doc, start, end))
        blocks.append(segments[:-1])  # without the sentinel's EOS
    pieces = [s for segments in blocks for s in segments if isinstance(s, str)]
    teacher_backend = fast_backend(teacher_tokenizer, "teacher")
    encoded = iter(e.ids for e in teacher_backend.encode_batch(pieces, add_special_tokens=False))
    teacher = [[i for s in segments for i in ([s] if isinstance(s, int) else next(encoded))] for segments in blocks]
    return torch.tensor(stream[: n_blocks * width], dtype=torch.long).view(n_blocks, width), teacher


def pair_rows(pairs: dict[str, tuple[torch.Tensor, list[list[int]]]],
              teacher_context: int) -> tuple[dict[str, torch.Tensor], int]:
    """Sampler rows per domain: the student's block, then the teacher's ids padded with PAD to one
    width for every domain (at most teacher_context + 1, the teacher's window plus its last label).
    Returns (rows, how many teacher sequences had to be cut to fit)."""
    longest = max(len(ids) for _, teacher in pairs.values() for ids in teacher)
    width = max(2, min(longest, teacher_context + 1))
    rows, cut = {}, 0
    for domain, (student, teacher) in pairs.items():
        padded = torch.full((len(teacher), width), PAD, dtype=torch.long)
        for i, ids in enumerate(teacher):
            cut += len(ids) > width
            padded[i, : min(len(ids), width)] = torch.tensor(ids[:width], dtype=torch.long)
        rows[domain] = torch.cat([student, padded], dim=1)
    return rows, cut


def split_rows(rows: torch.Tensor, student_width: int, teacher_pad_id: int, ignore_index: int = -100):
    """(student inputs, student labels, teacher inputs, teacher labels) from sampler rows; teacher
    padding is read as teacher_pad_id (at the end of the sequence: causal attention never sees it)
    and labelled ignore_index."""
    student, teacher = rows[:, :student_width], rows[:, student_width:]
    labels = torch.where(teacher[:, 1:] == PAD, ignore_index, teacher[:, 1:])
    inputs = torch.where(teacher[:, :-1] == PAD, teacher_pad_id, teacher[:, :-1])
    return student[:, :-1], student[:, 1:], inputs, labels
