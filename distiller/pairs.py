"""Rows that carry two tokenizations of one text, for a teacher and a student with different tokenizers.

The token store holds the student's tokens (distiller/store.py); a row is made when the sampler
draws it. The student's block is split at its end-of-text ids; each run of tokens between them is
decoded back to its text (the byte-level BPE and sentencepiece tokenizers kdh meets decode
losslessly, apart from a character whose bytes a block boundary splits) and tokenized by the
teacher as one piece, and each end-of-text becomes the teacher's. One row holds both: the student's
``block_size + 1`` ids, then the teacher's ids of the same text; ``collate`` pads a batch's teacher
parts with ``PAD`` to the longest. ``DomainSampler`` draws whole rows, so its seeded order and its
resumable state are exactly those of the one-tokenizer loop.
"""

from __future__ import annotations

import logging

import torch

from distiller.data import fast_backend
from distiller.errors import InputError

log = logging.getLogger(__name__)

PAD = -1  # a teacher position with no token, in the sampler's rows


def teacher_ids(block: list[int], student_tokenizer, teacher_tokenizer) -> list[int]:
    """The teacher's tokens of the text of one student block (end-of-text ids kept as the teacher's)."""
    s_eos, t_eos = student_tokenizer.eos_token_id, teacher_tokenizer.eos_token_id
    segments: list[int | list[int]] = []
    for token in block:
        if token == s_eos:
            segments.append(t_eos)
        elif segments and isinstance(segments[-1], list):
            segments[-1].append(token)
        else:
            segments.append([token])
    runs = [s for s in segments if isinstance(s, list)]
    texts = [student_tokenizer.decode(run, clean_up_tokenization_spaces=False) for run in runs]
    encoded = iter(e.ids for e in fast_backend(teacher_tokenizer, "teacher").encode_batch(texts, add_special_tokens=False))
    return [i for s in segments for i in ([s] if isinstance(s, int) else next(encoded))]


class PairedBlocks:
    """The student's blocks, each with the teacher's tokens of its text: ``rows[i]`` is one
    LongTensor, the student's ``width`` ids then the teacher's (at most ``teacher_context + 1``)."""

    def __init__(self, blocks, student_tokenizer, teacher_tokenizer, teacher_context: int):
        if student_tokenizer.eos_token_id is None or teacher_tokenizer.eos_token_id is None:
            raise InputError("both tokenizers need an end-of-text token to separate documents")
        fast_backend(student_tokenizer, "student")
        fast_backend(teacher_tokenizer, "teacher")
        self.blocks, self.student, self.teacher = blocks, student_tokenizer, teacher_tokenizer
        self.limit = teacher_context + 1  # the teacher's window plus its last label
        self.cut = 0  # rows whose teacher tokens were longer than the teacher's context

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def shape(self) -> tuple[int, int]:
        return self.blocks.shape

    def __getitem__(self, index: int) -> torch.Tensor:
        block = self.blocks[index]
        ids = teacher_ids(block.tolist(), self.student, self.teacher)
        if len(ids) > self.limit:
            if not self.cut:
                log.warning("a teacher sequence was longer than the teacher's context (%d) and was cut", self.limit - 1)
            self.cut += 1
            ids = ids[:self.limit]
        return torch.cat([block, torch.tensor(ids, dtype=torch.long)])


def collate(rows: list[torch.Tensor], student_width: int) -> torch.Tensor:
    """One batch of paired rows: the teacher parts padded with PAD to the longest (at least 2)."""
    width = max(2, max(len(r) - student_width for r in rows))
    out = torch.full((len(rows), student_width + width), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def split_rows(rows: torch.Tensor, student_width: int, teacher_pad_id: int, ignore_index: int = -100):
    """(student inputs, student labels, teacher inputs, teacher labels) from sampler rows; teacher
    padding is read as teacher_pad_id (at the end of the sequence: causal attention never sees it)
    and labelled ignore_index."""
    student, teacher = rows[:, :student_width], rows[:, student_width:]
    labels = torch.where(teacher[:, 1:] == PAD, ignore_index, teacher[:, 1:])
    inputs = torch.where(teacher[:, :-1] == PAD, teacher_pad_id, teacher[:, :-1])
    return student[:, :-1], student[:, 1:], inputs, labels
