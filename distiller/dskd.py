"""Distillation between models that do not share an output space: dual-space KD (DSKD) and its
cross-model attention (CMA) for different vocabularies. (Universal logit distillation, the other
cross-tokenizer signal: distiller/uld.py.)

DSKD: Zhang et al., "Dual-Space Knowledge Distillation for Large Language Models", EMNLP 2024,
code github.com/songmzhang/DSKD (criteria ``dual_space_kd`` and ``dual_space_kd_with_cma``).
The formulas as the reference code has them, and its settings, are written down in
docs/distillation.md ("Teacher signals across tokenizers").

Same vocabulary (``dual_space_loss``), from the two models' last hidden states h_S, h_T:
    student space   z_t2s = P_t2s(h_T) · W_S^T  with the student head W_S detached
                    L_ce_t2s = CE(z_t2s, y)                  trains P_t2s against the labels
                    L_kd_stu = D(z_S ‖ stopgrad z_t2s)       D: any divergence of losses.py
    teacher space   z_s2t = P_s2t(h_S) · W_T^T  with the frozen teacher head
                    L_kd_tea = KL(p_T ‖ softmax z_s2t)       forward KL, as the reference code
    L = (1 − w)·CE(z_S, y) + w·(L_ce_t2s + L_kd_stu + L_kd_tea),   w = 0.5 (``KD_RATE``)

Different vocabularies (``cma_loss``): each model reads its own tokenization of the same text, so
positions do not correspond. Attention from student positions (queries: P_query of the student's
[input; target] token embeddings) to teacher positions (keys: the teacher's [input; target]
embeddings) carries the teacher's states into the student's sequence, P_t2s(attention · values),
and the transposed attention carries the student's into the teacher's. The student-space KD then
counts only the positions where the carried distribution's argmax is the label, i.e. where the
alignment found the right teacher position.

Pure functions on tensors plus one small nn.Module; the reductions are means over valid positions
(losses.py's convention). The V-sized logits exist one chunk of positions at a time under
activation checkpointing, as in ``losses.distillation_loss``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# One implementation of the log-softmax, the divergences and the chunking: losses.py's.
from distiller.losses import (CrossEntropyForwardKL, Head, check_chunk_size, check_options, divergence_from_log_probs,
                              log_probs, maybe_checkpoint, positions_per_chunk, weight_and_bias)

KD_RATE = 0.5  # w in (1 − w)·CE + w·KD: every DSKD script (and its ULD re-implementation) uses 0.5
TEACHER_SPACE_DIVERGENCE = "forward_kl"  # DSKD's released code fixes it; DSKDv2 uses the chosen one


class Projectors(nn.Module):
    """DSKD's projectors (configs/projector_config.json): t2s maps the teacher's hidden size to the
    student's, s2t the reverse; CMA adds ``query``, from the student's [input; target] embeddings
    (2·d_s) to the teacher's (2·d_t). Plain nn.Linear with bias, default initialisation; the
    trainer builds them with ``from_heads``."""

    def __init__(self, student_dim: int, teacher_dim: int, cross_attention: bool = False):
        super().__init__()
        self.t2s = nn.Linear(teacher_dim, student_dim)
        self.s2t = nn.Linear(student_dim, teacher_dim)
        self.query = nn.Linear(2 * student_dim, 2 * teacher_dim) if cross_attention else None

    @classmethod
    def from_heads(cls, student_head: Tensor, teacher_head: Tensor, cross_attention: bool = False,
                   token_pairs: tuple[Tensor, Tensor] | None = None) -> Projectors:
        """Projectors whose t2s and s2t start from the two LM heads (DSKDv2's initialisation):
        P_t2s = pinv(W_S)·W_T, the least-squares solution of W_S·P ≈ W_T, so the teacher's states
        projected and read by the student's head give the teacher's logits as nearly as a linear
        map can; P_s2t = pinv(W_T)·W_S likewise; biases 0. With one head for both, both are the
        identity. ``token_pairs`` (student ids, teacher ids): the rows that mean the same token when
        the vocabularies differ (heads [V, d]; without it the two heads' rows must correspond)."""
        w_s, w_t = student_head.detach().double(), teacher_head.detach().double()
        if token_pairs is not None:
            w_s, w_t = w_s[token_pairs[0]], w_t[token_pairs[1]]
        if w_s.shape[0] != w_t.shape[0]:
            raise ValueError(f"heads of {w_s.shape[0]} and {w_t.shape[0]} rows: give token_pairs to match them")
        projectors = cls(w_s.shape[1], w_t.shape[1], cross_attention)
        # ``query`` keeps nn.Linear's default: it maps token embeddings to attention queries, which no head reads.
        with torch.no_grad():
            for linear, (into, out_of) in ((projectors.t2s, (w_s, w_t)), (projectors.s2t, (w_t, w_s))):
                linear.weight.copy_(torch.linalg.pinv(into) @ out_of)
                linear.bias.zero_()
        return projectors


@dataclass
class DualSpaceTerms:
    """The parts of the dual-space loss, each a mean over valid positions (student positions, and
    teacher positions for ``teacher_kd``), kept apart so that each can be logged and tested."""

    student_ce: Tensor  # CE of the student's own logits: the task loss
    t2s_ce: Tensor  # CE of the teacher's states seen through the student's head: trains P_t2s only
    student_kd: Tensor  # D(z_S ‖ stopgrad z_t2s): trains the student
    teacher_kd: Tensor  # KL(p_T ‖ softmax z_s2t): trains the student and P_s2t
    agreement: Tensor  # share of student positions where argmax z_t2s is the label

    @property
    def kd(self) -> Tensor:
        return self.t2s_ce + self.student_kd + self.teacher_kd

    def total(self, kd_rate: float = KD_RATE) -> Tensor:
        return (1.0 - kd_rate) * self.student_ce + kd_rate * self.kd


@dataclass
class Side:
    """One model's view of a batch, for CMA and ULD (distiller/uld.py): its final hidden states, LM head, input
    embedding table, and its own token ids (inputs, and labels shifted by one with ``ignore_index``
    where a position has no target: padding)."""

    hidden: Tensor  # [B, n, d]
    head: Head  # [V, d] weight, (weight, bias) or an nn.Linear-like module
    inputs: Tensor  # [B, n]
    labels: Tensor  # [B, n]
    embedding: Tensor | None = None  # [V, d]; CMA's keys and queries are built from it


# --- the chunked sums (the V-sized logits exist only in here) ------------------------------------

def _student_space_sums(hidden: Tensor, carried: Tensor, targets: Tensor, weight: Tensor, bias: Tensor | None,
                        *, kind: str, temperature: float, beta: float, alpha: float,
                        only_agreeing: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Over one chunk of student positions: (Σ CE(z_S), Σ CE(z_t2s), Σ D(z_S ‖ z_t2s), #agreeing).

    ``carried`` is the teacher's state brought into the student's space (projected, or attended and
    projected). The head is detached for z_t2s: the student-space CE trains the projector, never the
    student's head; and z_t2s is detached as the KD target, so the KD trains the student only."""
    log_q = log_probs(F.linear(hidden, weight, bias), 1.0, may_be_infinite=False)
    student_ce = -log_q.gather(-1, targets.unsqueeze(-1)).sum()
    frozen_bias = bias.detach() if bias is not None else None
    log_t2s = log_probs(F.linear(carried, weight.detach(), frozen_bias), 1.0, may_be_infinite=False)
    t2s_ce = -log_t2s.gather(-1, targets.unsqueeze(-1)).sum()
    agree = log_t2s.argmax(-1) == targets
    target = log_t2s.detach()
    if temperature != 1.0:  # CE at τ = 1, the divergence at τ (as in losses.distillation_loss)
        log_q, target = log_probs(log_q, temperature, may_be_infinite=False), log_probs(target, temperature)
    per_position = divergence_from_log_probs(log_q, target, kind, beta, alpha)
    if only_agreeing:
        per_position = per_position.masked_fill(~agree, 0.0)
    return student_ce, t2s_ce, per_position.sum(), agree.sum().to(student_ce.dtype)


def _teacher_space_sum(carried: Tensor, teacher_hidden: Tensor, weight: Tensor, bias: Tensor | None, *,
                       kind: str, temperature: float, beta: float, alpha: float) -> Tensor:
    """Σ D(teacher ‖ z_s2t) over one chunk of teacher positions; the teacher's head is a constant."""
    log_q = log_probs(F.linear(carried, weight, bias), temperature, may_be_infinite=False)
    with torch.no_grad():
        log_p = log_probs(F.linear(teacher_hidden.to(weight.dtype), weight, bias), temperature, may_be_infinite=False)
    return divergence_from_log_probs(log_q, log_p, kind, beta, alpha).sum()


def _chunked_sums(fn, n_out: int, chunk_size: int | None, per_position: tuple[Tensor, ...],
                  shared: tuple) -> list[Tensor]:
    """The n_out sums fn returns, added over chunks of positions: fn(*a chunk of each per-position
    tensor, *shared), each chunk under activation checkpointing. Zeros (still connected to the
    inputs, so backward works) when there is no position at all."""
    chunk = chunk_size or max(per_position[0].shape[0], 1)
    totals = None
    for parts in zip(*(t.split(chunk) for t in per_position)):
        out = maybe_checkpoint(fn, *parts, *shared)
        out = out if isinstance(out, tuple) else (out,)
        totals = list(out) if totals is None else [a + b for a, b in zip(totals, out)]
    if totals is None:
        totals = [sum(t.sum() * 0.0 for t in per_position if t.is_floating_point())] * n_out
    return totals


def _student_space(hidden: Tensor, head: Head, carried: Tensor, targets: Tensor, options: dict,
                   only_agreeing: bool, chunk_size: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    weight, bias = weight_and_bias(head)
    fn = partial(_student_space_sums, only_agreeing=only_agreeing, **options)
    ce, t2s_ce, kd, agree = _chunked_sums(fn, 4, chunk_size, (hidden, carried, targets), (weight, bias))
    n = max(hidden.shape[0], 1)
    return ce / n, t2s_ce / n, kd / n, agree / n


def _teacher_space(carried: Tensor, teacher_hidden: Tensor, head: Head, options: dict,
                   kind: str, chunk_size: int | None) -> Tensor:
    weight, bias = (t.detach() if t is not None else None for t in weight_and_bias(head))
    if kind == "forward_kl" and torch.is_grad_enabled() and carried.requires_grad:
        # The teacher's head is the widest (152k rows for Qwen2): the fused forward KL runs it once
        # per position and never again in backward (losses.CrossEntropyForwardKL).
        chunk = positions_per_chunk(chunk_size, carried.shape[0], weight.shape[0])
        targets = torch.zeros(carried.shape[0], dtype=torch.long, device=carried.device)  # unused: no CE
        kd, _, _ = CrossEntropyForwardKL.apply(carried, weight, bias, targets, teacher_hidden.detach(), weight, bias,
                                                1.0, options["temperature"], chunk, False)
        return kd / max(carried.shape[0], 1)
    # The chunk function reads (carried chunk, teacher chunk, weight, bias) in that order.
    fn = partial(_teacher_space_sum, **{**options, "kind": kind})
    (kd,) = _chunked_sums(fn, 1, chunk_size, (carried, teacher_hidden.detach()), (weight, bias))
    return kd / max(carried.shape[0], 1)


# --- same vocabulary: dual-space KD --------------------------------------------------------------

def dual_space_loss(student_hidden: Tensor, student_head: Head, teacher_hidden: Tensor, teacher_head: Head,
                    labels: Tensor, projectors: Projectors, *, kind: str = "forward_kl", temperature: float = 1.0,
                    beta: float = 0.5, alpha: float = 0.1, teacher_kind: str = TEACHER_SPACE_DIVERGENCE,
                    chunk_size: int | None = 1024, ignore_index: int = -100) -> DualSpaceTerms:
    """DSKD for a teacher and a student that read the same tokens (one vocabulary, any hidden sizes).

    student_hidden [B, T, d_s], teacher_hidden [B, T, d_t] (a constant), labels [B, T] already shifted.
    ``kind`` is the student-space divergence (any of losses.DIVERGENCES); ``teacher_kind`` the
    teacher-space one (forward KL, as DSKD's code). With identity projectors and one shared head the
    student-space KD is exactly ``losses.divergence(z_S, z_T, kind)``: DSKD reduces to plain KD."""
    options = {"kind": kind, "temperature": temperature, "beta": beta, "alpha": alpha}
    check_options(kind, temperature, beta, alpha)
    check_options(teacher_kind, temperature, beta, alpha)
    check_chunk_size(chunk_size)
    if student_hidden.shape[:-1] != labels.shape or teacher_hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden states {tuple(student_hidden.shape)} (student), {tuple(teacher_hidden.shape)} "
                         f"(teacher) and labels {tuple(labels.shape)} must share batch and length")
    valid = labels.reshape(-1) != ignore_index
    h_s = student_hidden.reshape(-1, student_hidden.shape[-1])[valid]
    h_t = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])[valid]
    targets = labels.reshape(-1)[valid]
    student_ce, t2s_ce, student_kd, agreement = _student_space(
        h_s, student_head, projectors.t2s(h_t), targets, options, only_agreeing=False, chunk_size=chunk_size)
    teacher_kd = _teacher_space(projectors.s2t(h_s), h_t, teacher_head, options, teacher_kind, chunk_size)
    return DualSpaceTerms(student_ce, t2s_ce, student_kd, teacher_kd, agreement)


# --- different vocabularies: cross-model attention -----------------------------------------------

def index_embeddings(embedding: Tensor, inputs: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    """[E(x_i); E(y_i)] per position, [B, n, 2d], detached: a position is known by the token it reads
    and the token it must predict. Positions without a target read token 0 (masked later)."""
    safe_inputs = torch.where(valid, inputs, torch.zeros_like(inputs))
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
    weight = embedding.detach()
    return torch.cat([F.embedding(safe_inputs, weight), F.embedding(safe_labels, weight)], dim=-1)


def _std_normalised(x: Tensor, valid: Tensor) -> Tensor:
    """x divided by the standard deviation of its valid positions' entries (DSKD's scale-free keys
    and values: the two models' embeddings and states live on different scales)."""
    return x / x[valid].float().std().clamp_min(1e-6).to(x.dtype)


def cma_logits(queries: Tensor, keys: Tensor, student_valid: Tensor, teacher_valid: Tensor) -> Tensor:
    """Attention logits [B, n_s, n_t] = Q·Kᵀ/√(2·d_t); a pair with a padded side gets the dtype's
    lowest value, so its weight is 0 in any softmax that has a valid entry (and never NaN)."""
    dtype = torch.promote_types(queries.dtype, torch.float32)  # at least float32, as the softmaxes that follow
    logits = queries.to(dtype) @ keys.to(dtype).transpose(-1, -2) / math.sqrt(keys.shape[-1])
    pair = student_valid.unsqueeze(-1) & teacher_valid.unsqueeze(-2)
    return logits.masked_fill(~pair, torch.finfo(logits.dtype).min)


def cma_loss(student: Side, teacher: Side, projectors: Projectors, *, kind: str = "forward_kl",
             temperature: float = 1.0, beta: float = 0.5, alpha: float = 0.1,
             teacher_kind: str = TEACHER_SPACE_DIVERGENCE, chunk_size: int | None = 1024,
             ignore_index: int = -100) -> tuple[DualSpaceTerms, tuple[Tensor, Tensor]]:
    """DSKD with cross-model attention, for two models that tokenize the same text differently.

    Returns (the terms, (the attention weights from student to teacher positions [B, n_s, n_t],
    each row a distribution over teacher positions; and from teacher to student [B, n_t, n_s])).
    Both sides need ``embedding``; ``projectors`` needs ``query``. Both directions as DSKD's code:
      t2s = softmax_t(A) · P_t2s(h_T/σ + E_T(y)/σ)   → student space, through W_S (detached)
      s2t = softmax_s(Aᵀ) · P_s2t(h_S)               → teacher space, through W_T (frozen)
    The student-space KD counts only positions where argmax z_t2s is the label (``agreement``)."""
    options = {"kind": kind, "temperature": temperature, "beta": beta, "alpha": alpha}
    check_options(kind, temperature, beta, alpha)
    check_options(teacher_kind, temperature, beta, alpha)
    check_chunk_size(chunk_size)
    if projectors.query is None:
        raise ValueError("cross-model attention needs Projectors(..., cross_attention=True)")
    if student.embedding is None or teacher.embedding is None:
        raise ValueError("cross-model attention needs both models' input embeddings")
    s_valid, t_valid = student.labels != ignore_index, teacher.labels != ignore_index
    h_t = teacher.hidden.detach()

    queries = projectors.query(index_embeddings(student.embedding, student.inputs, student.labels, s_valid))
    keys = _std_normalised(index_embeddings(teacher.embedding, teacher.inputs, teacher.labels, t_valid), t_valid)
    attention = cma_logits(queries, keys, s_valid, t_valid)
    teacher_targets = F.embedding(torch.where(t_valid, teacher.labels, 0), teacher.embedding.detach())
    values = projectors.t2s(_std_normalised(h_t, t_valid) + _std_normalised(teacher_targets, t_valid))
    t2s_weights, s2t_weights = attention.softmax(-1), attention.transpose(-1, -2).softmax(-1)
    t2s_hidden = (t2s_weights @ values.to(t2s_weights.dtype)).to(student.hidden.dtype)  # [B, n_s, d_s]
    s2t_hidden = (s2t_weights @ projectors.s2t(student.hidden).to(s2t_weights.dtype)).to(h_t.dtype)  # [B, n_t, d_t]

    student_ce, t2s_ce, student_kd, agreement = _student_space(
        student.hidden[s_valid], student.head, t2s_hidden[s_valid], student.labels[s_valid], options,
        only_agreeing=True, chunk_size=chunk_size)
    teacher_kd = _teacher_space(s2t_hidden[t_valid], h_t[t_valid], teacher.head, options, teacher_kind, chunk_size)
    return DualSpaceTerms(student_ce, t2s_ce, student_kd, teacher_kd, agreement), (t2s_weights, s2t_weights)
