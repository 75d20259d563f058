"""The loss of one batch, for every ``--kd`` mode, and what a mode trains beside the student.

- kd: DDK's Eq. 3, CE + γ·divergence(teacher ‖ student) over one vocabulary, through the fused
  chunked loss (losses.distillation_loss).
- dskd: dual-space KD on one vocabulary; dskd-cma: DSKD with cross-model attention, any two
  tokenizers (distiller/dskd.py); uld: universal logit distillation, any two tokenizers
  (distiller/uld.py). These weigh (1 − w)·CE + w·KD, and DSKD trains projectors between the two
  hidden spaces.
- kd_weight 0 in any mode: continued pre-training (CPT), the student's CE alone, no teacher forward.
- kd from a stored teacher signal (``SignalStep``): the same loss against the teacher's sparse target
  read from disk (distiller/sparse_losses.py, docs/teacher-signal.md): no teacher at all.

Rows from two tokenizers (``paired``) carry the student's tokens, then the teacher's tokens of the
same text (distiller/pairs.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from distiller.dskd import Projectors, Side, cma_loss, dual_space_loss
from distiller.uld import uld_loss
from distiller.losses import distillation_loss
from distiller.measure import last_hidden
from distiller.onpolicy import generated_labels
from distiller.pairs import split_rows
from distiller.sparse_losses import SparseTarget, sparse_distillation_loss

log = logging.getLogger(__name__)


def shared_tokens(student_tokenizer, teacher_tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(student ids, teacher ids) of the tokens both vocabularies spell the same way."""
    s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    common = sorted(set(s_vocab) & set(t_vocab))
    return (torch.tensor([s_vocab[t] for t in common], dtype=torch.long),
            torch.tensor([t_vocab[t] for t in common], dtype=torch.long))


def make_projectors(kd: str, kd_weight: float, student, teacher, token_pairs=None) -> Projectors | None:
    """DSKD's projectors between the two models' final hidden sizes, initialised from the two heads
    (``Projectors.from_heads``); across vocabularies ``token_pairs`` (``shared_tokens``) matches
    their rows, and with no token in common the projectors keep nn.Linear's random start."""
    if kd not in ("dskd", "dskd-cma") or kd_weight == 0:
        return None
    w_s, w_t = student.get_output_embeddings().weight, teacher.get_output_embeddings().weight
    if token_pairs is not None and len(token_pairs[0]) == 0:
        log.warning("the two vocabularies share no token: DSKD's projectors start at random")
        return Projectors(w_s.shape[1], w_t.shape[1], cross_attention=kd == "dskd-cma")
    return Projectors.from_heads(w_s, w_t, cross_attention=kd == "dskd-cma", token_pairs=token_pairs)


def sync_gradients(accelerator, module: torch.nn.Module | None) -> None:
    """Average a module's gradients over the ranks. The projectors are not wrapped in DDP (they are
    called piecewise, never through one forward), so their gradients are reduced here, by hand."""
    if module is None or accelerator.num_processes == 1:
        return
    for p in module.parameters():
        if p.grad is not None:
            p.grad = accelerator.reduce(p.grad, reduction="mean")


@dataclass
class Step:
    """Sampler rows → (loss, ce, kd), as ``losses.distillation_loss`` returns them: only the loss
    carries a gradient; ce and kd are for logging."""

    kd: str
    kd_weight: float
    student: torch.nn.Module  # as prepared by accelerate (DDP-wrapped under several processes)
    student_core: torch.nn.Module  # the unwrapped student: its head and embedding
    teacher: torch.nn.Module
    projectors: Projectors | None
    paired: bool  # rows hold two tokenizations (different tokenizers)
    student_width: int
    teacher_pad_id: int | None
    options: dict  # kind, temperature, chunk_size
    prompt_tokens: int = 0  # > 0: rows are a prompt and the teacher's continuation (SeqKD): train on the latter
    eos_id: int | None = None

    def __call__(self, rows: torch.Tensor):
        if self.paired:
            s_in, s_lab, t_in, t_lab = split_rows(rows, self.student_width, self.teacher_pad_id)
        else:
            s_in, s_lab = rows[:, :-1], rows[:, 1:]
            if self.prompt_tokens:  # distiller/seqkd.py: the teacher's continuation is the target
                s_lab = generated_labels(rows, self.prompt_tokens, self.eos_id)
            t_in, t_lab = s_in, s_lab
        hidden = last_hidden(self.student, s_in)
        head = self.student_core.get_output_embeddings()
        w, chunk = self.kd_weight, self.options["chunk_size"]
        if w == 0:
            return distillation_loss(hidden, head, None, None, s_lab, kd_weight=0.0, chunk_size=chunk)
        with torch.inference_mode():
            teacher_hidden = last_hidden(self.teacher, t_in)
        teacher_hidden = teacher_hidden.clone()  # out of inference mode: autograd may save it
        teacher_head = self.teacher.get_output_embeddings()
        if self.kd == "kd":
            return distillation_loss(hidden, head, teacher_hidden, teacher_head, s_lab, kd_weight=w, **self.options)
        if self.kd == "dskd":
            terms = dual_space_loss(hidden, head, teacher_hidden, teacher_head, s_lab, self.projectors, **self.options)
            return terms.total(w), terms.student_ce, terms.kd
        student = Side(hidden, head, s_in, s_lab, self.student_core.get_input_embeddings().weight)
        teacher = Side(teacher_hidden, teacher_head, t_in, t_lab, self.teacher.get_input_embeddings().weight)
        if self.kd == "uld":
            ce, kd = uld_loss(student, teacher, temperature=self.options["temperature"], chunk_size=chunk)
            return (1 - w) * ce + w * kd, ce, kd
        terms, _ = cma_loss(student, teacher, self.projectors, **self.options)
        return terms.total(w), terms.student_ce, terms.kd


@dataclass
class SignalStep:
    """Sampler rows and their stored teacher target → (loss, ce, kd) of ``--kd kd``: CE + γ·forward KL
    against the sparse target, the student's logits a chunk at a time, no teacher forward."""

    kd_weight: float
    student: torch.nn.Module  # as prepared by accelerate
    student_core: torch.nn.Module  # the unwrapped student: its head
    options: dict  # temperature, chunk_size

    def __call__(self, rows: torch.Tensor, target: SparseTarget):
        hidden = last_hidden(self.student, rows[:, :-1])
        return sparse_distillation_loss(hidden, self.student_core.get_output_embeddings(), target, rows[:, 1:],
                                        kd_weight=self.kd_weight, temperature=self.options["temperature"],
                                        chunk_size=self.options["chunk_size"])
