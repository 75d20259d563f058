"""CE + γ·forward KL against a stored sparse teacher target, fused and chunked (docs/teacher-signal.md).

A sparse target holds, per position, a few teacher entries and what is left over:

- top-k: the k most likely ids with their probabilities p_i and the tail mass t = 1 − Σ p_i, a
  bucket standing for every other token. KL(p‖q) with the bucket is
  Σ_i p_i (log p_i − log q_i) + t (log t − log q_tail), q_tail = 1 − Σ_i q_i. At k = V the tail is
  empty and this is exactly the dense forward KL (tests/test_teacher_signal.py).
- sampled (Sparse Logit Sampling, Anshumann et al. 2025): N ids drawn from p with replacement, each
  weighing 1/N, no tail. E[Σ_draws (1/N)·onehot] = p, so the gradient q − p̂ is an unbiased estimate
  of the dense gradient q − p (top-k's is biased: it never pushes a tail token's mass where the
  teacher puts it), and Σ_draws (1/N)(log p − log q) is an unbiased estimate of KL(p‖q).

Both are one form: entries (ids, weights w, teacher log-probs) and a tail t, with Σ w + t = 1. The
gradient of the student's scaled logits s = z/τ is closed-form, q − w̃ where w̃ scatters w onto the
ids and spreads t over the tail in proportion to q, so each chunk multiplies it back through the
head in the forward, as losses.CrossEntropyForwardKL does for the dense teacher: the student's
logits exist one chunk at a time, nothing V-sized is kept for backward, and no teacher runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from distiller.losses import (GradientInForward, Head, HeadGradients, check_chunk_size, positions_per_chunk,
                              weight_and_bias)


@dataclass
class SparseTarget:
    """Per position: ``ids`` [..., m] (long), ``weights`` [..., m] (the target mass on each entry),
    ``log_probs`` [..., m] (the teacher's log-probability of each id, for the logged KL), ``tail``
    [...] (the mass on every id not listed; 0 for a sampled target)."""

    ids: Tensor
    weights: Tensor
    log_probs: Tensor
    tail: Tensor

    def to(self, device) -> SparseTarget:
        return SparseTarget(*(t.to(device) for t in (self.ids, self.weights, self.log_probs, self.tail)))

    def rows(self, start: int, stop: int) -> SparseTarget:
        """Rows [start, stop) of a batch (the first dimension)."""
        return SparseTarget(*(t[start:stop] for t in (self.ids, self.weights, self.log_probs, self.tail)))

    def flat(self, valid: Tensor) -> SparseTarget:
        """The valid positions of a [B, T, ...] target as [N, ...]."""
        m = self.ids.shape[-1]
        return SparseTarget(self.ids.reshape(-1, m)[valid], self.weights.reshape(-1, m)[valid],
                            self.log_probs.reshape(-1, m)[valid], self.tail.reshape(-1)[valid])


def target_from_log_probs(log_p: Tensor, k: int) -> SparseTarget:
    """The exact (unquantised) top-k target of teacher log-probabilities [..., V]: the yardstick
    the stored one is measured against, and at k = V the whole distribution."""
    top, ids = log_p.topk(k, dim=-1)
    weights = top.exp()
    tail = (1 - weights.sum(-1)).clamp_min(0) if k < log_p.shape[-1] else weights.new_zeros(weights.shape[:-1])
    return SparseTarget(ids, weights, top, tail)


def sampled_target(log_p: Tensor, draws: int, generator: torch.Generator | None = None) -> SparseTarget:
    """``draws`` ids from p with replacement, each weighing 1/draws (Sparse Logit Sampling's proposal = p)."""
    flat = log_p.reshape(-1, log_p.shape[-1])
    ids = torch.multinomial(flat.exp(), draws, replacement=True, generator=generator)
    ids = ids.reshape(*log_p.shape[:-1], draws)
    weights = torch.full(ids.shape, 1.0 / draws, dtype=log_p.dtype, device=log_p.device)
    return SparseTarget(ids, weights, log_p.gather(-1, ids), log_p.new_zeros(log_p.shape[:-1]))


def _log_tail(log_q: Tensor, ids: Tensor, log_q_ids: Tensor) -> Tensor:
    """log(1 − Σ q over the listed ids) per row, the ids distinct (top-k). From the listed ids' own
    mass, in float64, where the tail is big enough for that to be exact to float32; the rows with a tail
    under 1e-3 go through a masked logsumexp over the vocabulary (exact, −inf for an empty tail)."""
    tail = 1 - log_q_ids.double().exp().sum(-1)
    small = tail < 1e-3
    out = tail.clamp_min(1e-300).log().to(log_q.dtype)
    if small.any():
        rows = small.nonzero().squeeze(-1)
        in_tail = torch.ones(len(rows), log_q.shape[-1], dtype=torch.bool, device=log_q.device)
        in_tail.scatter_(-1, ids[rows], False)
        out[rows] = torch.where(in_tail, log_q[rows], -torch.inf).logsumexp(-1)
    return out


class SparseForwardKL(GradientInForward):
    """Σ CE + γ·Σ KL(p_τ‖q_τ) against a sparse target through the student's head, the gradient formed
    chunk by chunk in the forward. Outputs (Σ total, Σ ce, Σ kd); only the first carries a gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ids, weights, log_p, tail, kd_weight: float,
                temperature: float, chunk: int):
        grads = HeadGradients(ctx, hidden, weight)
        compute = grads.compute
        ce_sum = kd_sum = torch.zeros((), dtype=torch.float64, device=hidden.device)
        rows = torch.arange(chunk, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h, y = hidden[start:start + chunk], targets[start:start + chunk]
            i, w = ids[start:start + chunk], weights[start:start + chunk].to(compute)
            lp, t = log_p[start:start + chunk].to(compute), tail[start:start + chunk].to(compute)
            log_q = F.log_softmax(F.linear(h, weight, bias).to(compute), dim=-1)
            ce_sum = ce_sum - log_q.gather(-1, y.unsqueeze(-1)).sum().double()
            log_q_t = log_q if temperature == 1.0 else F.log_softmax(log_q / temperature, dim=-1)
            log_q_i = log_q_t.gather(-1, i)
            kd_sum = kd_sum + (w * (lp - log_q_i)).sum().double()
            spread = torch.zeros_like(t)  # t / q_tail: the tail's mass spread over its ids ∝ q
            if (t > 0).any():  # the bucket: KL's term t (log t − log q_tail)
                log_q_tail = _log_tail(log_q_t, i, log_q_i)
                has_tail = (t > 0) & (log_q_tail > -torch.inf)  # k = V leaves no tail, whatever t's rounding
                safe_t = torch.where(has_tail, t, 1.0)
                kd_sum = kd_sum + torch.where(has_tail, t * (safe_t.log() - log_q_tail), 0.0).sum().double()
                spread = torch.where(has_tail, (safe_t.log() - log_q_tail).exp(), 0.0)
            # d/ds of the KL is q_t·(1 − spread) everywhere, then + spread·q_t − w at the listed ids (ids
            # repeat in a sampled target: each draw adds its own −w); one V-sized pass, no mask.
            scale = kd_weight / temperature
            q = log_q.exp()
            if temperature == 1.0:
                grad = q * (1 + scale * (1 - spread)).unsqueeze(-1)
            else:
                grad = q + (scale * (1 - spread)).unsqueeze(-1) * log_q_t.exp()
            grad.scatter_add_(-1, i, scale * (spread.unsqueeze(-1) * log_q_i.exp() - w))
            del log_q, log_q_t, q
            grad[rows[:len(y)], y] -= 1
            grads.add(grad, h, weight, start)
        return GradientInForward.outputs(ctx, grads, weight, bias, ce_sum, kd_sum, kd_weight)


def sparse_distillation_loss(student_hidden: Tensor, student_head: Head, target: SparseTarget, labels: Tensor, *,
                             kd_weight: float = 0.2, temperature: float = 1.0, chunk_size: int | None = 1024,
                             ignore_index: int = -100) -> tuple[Tensor, Tensor, Tensor]:
    """DDK's loss (Eq. 3), CE + γ·forward KL, against a stored sparse ``target`` ([B, T, m] entries,
    [B, T] tail) instead of the teacher's hidden states; returns (total, ce, kd), means over the valid
    positions, as ``losses.distillation_loss``. The target was made at ``temperature`` (the student's
    logits are divided by it for the KL; CE stays at τ = 1)."""
    check_chunk_size(chunk_size)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_hidden.shape[:-1] != labels.shape or target.ids.shape[:-1] != labels.shape:
        raise ValueError(f"labels {tuple(labels.shape)}, hidden states {tuple(student_hidden.shape)} and target "
                         f"ids {tuple(target.ids.shape)} do not match")
    weight, bias = weight_and_bias(student_head)
    valid = labels.reshape(-1) != ignore_index
    hidden = student_hidden.reshape(-1, student_hidden.shape[-1])[valid]
    flat = target.flat(valid)
    chunk = positions_per_chunk(chunk_size, hidden.shape[0], weight.shape[0])
    total, ce, kd = SparseForwardKL.apply(hidden, weight, bias, labels.reshape(-1)[valid], flat.ids.long(),
                                          flat.weights, flat.log_probs, flat.tail, kd_weight, temperature, chunk)
    n = max(hidden.shape[0], 1)
    return total / n, ce / n, kd / n
