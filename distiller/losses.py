"""Distillation losses: token-level divergences between teacher and student next-token distributions.

Two ways in:
- `divergence` / `token_divergence` work on logits someone already has ([B, T, V] or [N, V]);
- `distillation_loss` is what the trainer calls: it takes final hidden states and LM heads and never
  materialises [B, T, V] logits. Positions go through in chunks, so peak memory grows with chunk ×
  vocabulary, not batch × length × vocabulary (a fused path in the manner of Liger's fused linear
  cross-entropy). For CE + forward KL (DDK's loss) each chunk's gradient is formed in the forward; the other
  divergences go under activation checkpointing. `distillation_loss_reference` is the plain version
  both must equal.

Conventions (docs/distillation.md, "Divergences"):
- p is the teacher distribution, q the student's, both softmax(logits / temperature).
- Every divergence is the true divergence (zero when p = q), not DistiLLM's cross-entropy variant, so
  logged KD values go to 0 at the optimum.
- Computed in at least float32 and in log space; the teacher is a constant (detached).
- Temperature divides the logits and nothing else: no Hinton τ² factor, as in the DDK paper, DSKD and
  TRL. With the DDK default τ = 1 the question does not arise.
- Reductions are means over valid (unmasked) tokens, TRL's "batchmean".
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tv")

Head = nn.Module | Tensor | tuple[Tensor, Tensor | None]


def check_options(kind: str, temperature: float, beta: float, alpha: float) -> None:
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence {kind!r}; expected one of: {', '.join(DIVERGENCES)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    # Written as `not (a <= x <= b)` so that NaN is rejected too.
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta (jsd mixture weight) must be in [0, 1], got {beta}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (skew mixture weight) must be in [0, 1], got {alpha}")


def log_probs(logits: Tensor, temperature: float, *, may_be_infinite: bool = True) -> Tensor:
    """log softmax(logits / temperature) over the vocabulary, in at least float32."""
    # Half-precision log-softmax over 50k+ entries loses exactly the tail that the divergences weigh.
    scaled = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature != 1.0:
        scaled = scaled / temperature
    if may_be_infinite:
        # -inf logits (banned tokens, masked vocabulary) become a huge finite floor: exp() of it is
        # still exactly 0, but (-inf) - (-inf), 0 * (-inf) and logaddexp(-inf, -inf)'s gradient can no
        # longer turn a value or a gradient into NaN. It costs one V-sized pass, so the fused path,
        # whose logits come out of a matmul and are finite, skips it.
        scaled = scaled.clamp_min(torch.finfo(scaled.dtype).min / 4)
    return F.log_softmax(scaled, dim=-1)


def _log_weight(weight: float) -> float:
    return math.log(weight) if weight > 0 else -math.inf


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a‖b) = Σ a (log a − log b) per row, from log-probabilities."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def _log_mixture(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(w·a + (1−w)·b) without leaving log space (a two-term logsumexp, like TRL's)."""
    return torch.logaddexp(log_a + _log_weight(weight_a), log_b + _log_weight(1.0 - weight_a))


def divergence_from_log_probs(log_q: Tensor, log_p: Tensor, kind: str, beta: float, alpha: float) -> Tensor:
    """Per-row divergence from student log-probs `log_q` and teacher log-probs `log_p`, [N, V] -> [N]."""
    if kind == "forward_kl":
        return _kl(log_p, log_q)
    if kind == "reverse_kl":
        return _kl(log_q, log_p)
    if kind == "jsd":
        # TRL special-cases the ends: the interior formula tends to β·KL(p‖q) (β→0) and (1−β)·KL(q‖p)
        # (β→1), so without this the ends would be a silent zero loss.
        if beta == 0.0:
            return _kl(log_p, log_q)
        if beta == 1.0:
            return _kl(log_q, log_p)
        log_m = _log_mixture(log_p, log_q, beta)
        return beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)
    if kind == "skew_kl":
        return _kl(log_p, _log_mixture(log_p, log_q, alpha))
    if kind == "skew_reverse_kl":
        return _kl(log_q, _log_mixture(log_q, log_p, alpha))
    if kind == "tv":
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
    raise ValueError(f"unknown divergence {kind!r}; expected one of: {', '.join(DIVERGENCES)}")


def token_divergence(student_logits: Tensor, teacher_logits: Tensor, kind: str = "forward_kl", *,
                     temperature: float = 1.0, beta: float = 0.5, alpha: float = 0.1) -> Tensor:
    """Divergence between teacher (p) and student (q) next-token distributions at each position.

    student_logits, teacher_logits: [..., V] -> [...] (float32, or float64 for float64 inputs).
    Gradients flow into student_logits only; the teacher is detached.

    kind:
      forward_kl       KL(p‖q) = Σ p (log p − log q): Hinton KD, the DDK paper's default.
      reverse_kl       KL(q‖p).
      jsd              generalised JSD of GKD / TRL's `generalized_jsd_loss`: with m = β·p + (1−β)·q,
                       β·KL(p‖m) + (1−β)·KL(q‖m). β = 0.5 is the symmetric JSD (≤ log 2). As in TRL,
                       β = 0 is exactly forward KL and β = 1 exactly reverse KL, but the interior is
                       discontinuous there: for small β it is ≈ β·KL(p‖q) and for β near 1 ≈ (1−β)·KL(q‖p),
                       so β close to an end mostly scales the loss down.
      skew_kl          KL(p ‖ α·p + (1−α)·q), DistiLLM's skew KL (α = 0 is forward KL).
      skew_reverse_kl  KL(q ‖ α·q + (1−α)·p) (α = 0 is reverse KL).
      tv               total variation ½ Σ |p − q|, in [0, 1].
    temperature divides both logits; the result is not multiplied by τ².
    """
    check_options(kind, temperature, beta, alpha)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    log_q = log_probs(student_logits, temperature)
    with torch.no_grad():
        log_p = log_probs(teacher_logits, temperature)
    return divergence_from_log_probs(log_q, log_p, kind, beta, alpha)


def maybe_checkpoint(fn, *args):
    """fn(*args), under non-reentrant checkpointing when a backward pass will need it.

    Checkpointing keeps only the chunk's inputs for backward and recomputes the V-sized intermediates
    (logits, softmaxes, products) chunk by chunk while backpropagating.
    """
    needs_grad = torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args)
    if not needs_grad:
        return fn(*args)
    # The chunk functions are deterministic, so there is no RNG state to stash and restore.
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)


def check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of positions or None, got {chunk_size}")


def _divergence_sum(student_logits: Tensor, teacher_logits: Tensor, **options) -> Tensor:
    return token_divergence(student_logits, teacher_logits, **options).sum()


def divergence(student_logits: Tensor, teacher_logits: Tensor, kind: str = "forward_kl", *,
               mask: Tensor | None = None, temperature: float = 1.0, beta: float = 0.5, alpha: float = 0.1,
               chunk_size: int | None = None) -> Tensor:
    """Mean `token_divergence` over valid positions: a scalar.

    Logits are [B, T, V] or [N, V]; mask is a bool tensor of the leading shape, True where the position
    counts (None: all do). With no valid position the result is 0.0, still connected to student_logits.
    chunk_size: process that many valid positions at a time under activation checkpointing, so only one
    chunk's V-sized intermediates exist at a time (same value and gradient as unchunked).
    """
    check_options(kind, temperature, beta, alpha)
    check_chunk_size(chunk_size)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    vocab = student_logits.shape[-1]
    student = student_logits.reshape(-1, vocab)
    teacher = teacher_logits.detach().reshape(-1, vocab)
    if mask is not None:
        if mask.shape != student_logits.shape[:-1]:
            raise ValueError(f"mask {tuple(mask.shape)} does not match logits {tuple(student_logits.shape)}")
        # Select rather than multiply by the mask: padded positions may hold inf/NaN, and 0 * NaN = NaN.
        keep = mask.reshape(-1).to(torch.bool)
        student, teacher = student[keep], teacher[keep]
    per_chunk = partial(_divergence_sum, kind=kind, temperature=temperature, beta=beta, alpha=alpha)
    if chunk_size is None:
        total = per_chunk(student, teacher)
    else:
        # split() gives views whose gradients come back through one SplitBackward (a single cat),
        # not one full-size zero tensor per chunk as slicing would.
        total = sum(maybe_checkpoint(per_chunk, s, t)
                    for s, t in zip(student.split(chunk_size), teacher.split(chunk_size)))
    return total / max(student.shape[0], 1)


def weight_and_bias(head: Head) -> tuple[Tensor, Tensor | None]:
    """An LM head as (weight [V, H], bias [V] or None): nn.Linear-like module, weight, or (weight, bias)."""
    if isinstance(head, nn.Module):
        return head.weight, getattr(head, "bias", None)
    if isinstance(head, (tuple, list)):
        weight, bias = head
        return weight, bias
    if isinstance(head, Tensor):
        return head, None
    raise TypeError(f"an LM head must be an nn.Module with .weight, a weight tensor or (weight, bias), "
                    f"got {type(head).__name__}")


def _fused_chunk_sums(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                      teacher_hidden: Tensor | None, teacher_weight: Tensor | None, teacher_bias: Tensor | None,
                      *, kind: str, temperature: float, beta: float, alpha: float) -> tuple[Tensor, Tensor]:
    """(Σ cross-entropy, Σ divergence) over one chunk of valid positions; logits exist only in here."""
    # No name holds the logits themselves (nothing downstream needs them), so each V-sized buffer is
    # freed as soon as its consumer is done with it.
    log_q = log_probs(F.linear(hidden, weight, bias), 1.0, may_be_infinite=False)
    ce_sum = -log_q.gather(-1, targets.unsqueeze(-1)).sum()
    if teacher_hidden is None:
        return ce_sum, ce_sum.new_zeros(())
    if temperature != 1.0:
        # CE stays at τ = 1. log_q is the logits shifted by a per-row constant, which softmax ignores,
        # so log_softmax(log_q / τ) = log_softmax(logits / τ).
        log_q = log_probs(log_q, temperature, may_be_infinite=False)
    with torch.no_grad():
        teacher_hidden = teacher_hidden.to(teacher_weight.dtype)
        teacher_logits = F.linear(teacher_hidden, teacher_weight, teacher_bias)
        log_p = log_probs(teacher_logits, temperature, may_be_infinite=False)
        del teacher_logits  # before the divergence's own V-sized temporaries are made
    return ce_sum, divergence_from_log_probs(log_q, log_p, kind, beta, alpha).sum()


# glibc's malloc serves blocks above its mmap threshold (capped at 32 MiB on 64-bit) with a fresh mmap
# and unmaps them on free, so V-sized temporaries above it fault in zeroed pages on every use: at
# V = 50k, chunks of 256 positions spent as much system CPU as arithmetic (docs/distill-step.md).
# Chunks are therefore capped in bytes as well as positions.
CHUNK_BYTES = 24 * 2**20


def positions_per_chunk(chunk_size: int | None, n_valid: int, vocab: int) -> int:
    if chunk_size is None:
        return max(n_valid, 1)
    return max(1, min(chunk_size, CHUNK_BYTES // (4 * vocab)))


class HeadGradients:
    """The gradients of a head's inputs (hidden states, weight, bias), formed chunk by chunk in the
    forward of a fused loss (``GradientInForward``): each chunk's gradient of its logits is multiplied
    back through the head at once, so nothing V-sized is kept for the backward."""

    def __init__(self, ctx, hidden: Tensor, weight: Tensor):
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        self.compute = torch.promote_types(hidden.dtype, torch.float32)
        self.hidden = torch.empty_like(hidden) if want_h else None
        self.weight = torch.zeros_like(weight, dtype=self.compute) if want_w else None
        self.bias = torch.zeros(weight.shape[0], dtype=self.compute, device=weight.device) if want_b else None

    def add(self, grad: Tensor, h: Tensor, weight: Tensor, start: int) -> None:  # one chunk's, from row start
        if self.hidden is not None:
            self.hidden[start:start + len(h)] = (grad @ weight.to(self.compute)).to(self.hidden.dtype)
        if self.weight is not None:
            self.weight.addmm_(grad.T, h.to(self.compute))
        if self.bias is not None:
            self.bias += grad.sum(0)


class GradientInForward(torch.autograd.Function):
    """A loss whose forward formed its gradient (``HeadGradients``); the backward only scales it.
    Outputs (Σ total, Σ ce, Σ kd); only the first carries a gradient."""

    @staticmethod
    def outputs(ctx, grads: HeadGradients, weight: Tensor, bias: Tensor | None, ce_sum: Tensor, kd_sum: Tensor,
                kd_weight: float):
        ctx.save_for_backward(grads.hidden, None if grads.weight is None else grads.weight.to(weight.dtype),
                              None if grads.bias is None else grads.bias.to(bias.dtype))
        ce_sum, kd_sum = ce_sum.to(grads.compute), kd_sum.to(grads.compute)
        ce_out, kd_out = ce_sum.clone(), kd_sum.clone()
        ctx.mark_non_differentiable(ce_out, kd_out)
        return ce_sum + kd_weight * kd_sum, ce_out, kd_out

    @staticmethod
    def backward(ctx, grad_total, _grad_ce, _grad_kd):
        grads = [None if g is None else g * grad_total.to(g.dtype) for g in ctx.saved_tensors]
        return (*grads, *[None] * (len(ctx.needs_input_grad) - len(grads)))


class CrossEntropyForwardKL(GradientInForward):
    """Σ CE + γ·Σ KL(p_τ‖q_τ) through the heads, its gradient formed chunk by chunk in the forward.

    The gradient of a position's student logits is closed-form, softmax(z) − onehot(y) +
    (γ/τ)·(softmax(z/τ) − p_τ), so each chunk multiplies it back through the head at once (as Liger's
    fused linear cross-entropy does), nothing recomputed, unlike the checkpointed path, which runs
    both heads twice. ``with_ce`` False leaves the CE out (Σ ce is 0): DSKD's teacher-space KL (dskd.py).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, teacher_hidden, teacher_weight, teacher_bias,
                kd_weight: float, temperature: float, chunk: int, with_ce: bool = True):
        grads = HeadGradients(ctx, hidden, weight)
        compute = grads.compute
        ce_sum = kd_sum = torch.zeros((), dtype=torch.float64, device=hidden.device)
        rows = torch.arange(chunk, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h, y = hidden[start:start + chunk], targets[start:start + chunk]
            log_q = F.log_softmax(F.linear(h, weight, bias).to(compute), dim=-1)
            if with_ce:
                ce_sum = ce_sum - log_q.gather(-1, y.unsqueeze(-1)).sum().double()
            grad = log_q.exp()  # q
            if teacher_hidden is not None:
                log_p = F.log_softmax(F.linear(teacher_hidden[start:start + chunk].to(teacher_weight.dtype),
                                               teacher_weight, teacher_bias).to(compute) / temperature, dim=-1)
                log_q_t = log_q if temperature == 1.0 else F.log_softmax(log_q / temperature, dim=-1)
                p = log_p.exp()
                kd_sum = kd_sum + (p * (log_p - log_q_t)).sum().double()
                del log_p
                q_t = grad if temperature == 1.0 else log_q_t.exp()
                grad = (kd_weight / temperature) * (q_t - p) + (grad if with_ce else 0.0)
                del p, q_t, log_q_t
            del log_q
            if with_ce:
                grad[rows[:len(y)], y] -= 1
            grads.add(grad, h, weight, start)
        return GradientInForward.outputs(ctx, grads, weight, bias, ce_sum, kd_sum, kd_weight)


def distillation_loss(student_hidden: Tensor, student_head: Head, teacher_hidden: Tensor | None,
                      teacher_head: Head | None, labels: Tensor, *, kd_weight: float = 0.2,
                      kind: str = "forward_kl", temperature: float = 1.0, beta: float = 0.5, alpha: float = 0.1,
                      chunk_size: int | None = 1024, ignore_index: int = -100) -> tuple[Tensor, Tensor, Tensor]:
    """DDK's training loss (Eq. 3), CE + γ·KD, from hidden states; returns (total, ce, kd).

    student_hidden [B, T, H] final hidden states; student_head: nn.Linear-like module, weight [V, H] or
    (weight, bias); it may be tied to the input embedding (gradients accumulate into the shared weight).
    teacher_hidden [B, T, H_t] and teacher_head [V, H_t] are constants; unused, and may be None, when
    kd_weight == 0 (the continued-pre-training baseline: no teacher forward at all).
    labels [B, T]: already shifted (position t predicts labels[t]); ignore_index marks positions to skip.
    ce and kd are means over valid positions, total = ce + kd_weight * kd (γ = 0.2, τ = 1 in DDK); when
    training with forward KL (or CE alone) only total carries a gradient, ce and kd are for logging.
    At most chunk_size positions (and CHUNK_BYTES of V-sized buffer) go through the heads at a time, so
    peak memory is O(chunk × V) in forward and backward; None does all valid positions in one piece.
    """
    check_options(kind, temperature, beta, alpha)
    check_chunk_size(chunk_size)
    if student_hidden.shape[:-1] != labels.shape:
        raise ValueError(f"labels {tuple(labels.shape)} do not match hidden states "
                         f"{tuple(student_hidden.shape)}")
    use_teacher = kd_weight != 0
    if use_teacher and (teacher_hidden is None or teacher_head is None):
        raise ValueError("kd_weight != 0 needs teacher_hidden and teacher_head")

    weight, bias = weight_and_bias(student_head)
    valid = labels.reshape(-1) != ignore_index
    hidden = student_hidden.reshape(-1, student_hidden.shape[-1])[valid]
    targets = labels.reshape(-1)[valid]
    n_valid = hidden.shape[0]
    chunk = positions_per_chunk(chunk_size, n_valid, weight.shape[0])

    teacher_rows = teacher_weight = teacher_bias = None
    if use_teacher:
        if teacher_hidden.shape[:-1] != labels.shape:
            raise ValueError(f"teacher hidden states {tuple(teacher_hidden.shape)} do not match labels "
                             f"{tuple(labels.shape)}")
        teacher_weight, teacher_bias = (t.detach() if t is not None else None
                                        for t in weight_and_bias(teacher_head))
        teacher_rows = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])[valid]

    trains = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if trains and (kind == "forward_kl" or not use_teacher):
        total_sum, ce_sum, kd_sum = CrossEntropyForwardKL.apply(
            hidden, weight, bias, targets, teacher_rows, teacher_weight, teacher_bias,
            kd_weight if use_teacher else 0.0, temperature, chunk)
        n = max(n_valid, 1)
        return total_sum / n, ce_sum / n, kd_sum / n

    hidden_chunks, target_chunks = hidden.split(chunk), targets.split(chunk)
    teacher_chunks = [None] * len(hidden_chunks) if teacher_rows is None else teacher_rows.split(chunk)
    chunk_sums = partial(_fused_chunk_sums, kind=kind, temperature=temperature, beta=beta, alpha=alpha)
    # Checkpointing trades a second pass through both heads for memory; when all the valid positions'
    # V-sized buffers together fit in CHUNK_BYTES there is no memory to win (docs/on-policy.md: small
    # vocabularies, or the few generated positions of an on-policy step).
    small = n_valid * weight.shape[0] * 4 <= CHUNK_BYTES
    ce_sum = kd_sum = 0.0
    for h, y, t in zip(hidden_chunks, target_chunks, teacher_chunks):
        parts = (h, weight, bias, y, t, teacher_weight, teacher_bias)
        ce_part, kd_part = chunk_sums(*parts) if small else maybe_checkpoint(chunk_sums, *parts)
        ce_sum, kd_sum = ce_sum + ce_part, kd_sum + kd_part
    ce, kd = ce_sum / max(n_valid, 1), kd_sum / max(n_valid, 1)
    return ce + kd_weight * kd, ce, kd


def distillation_loss_reference(student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor, *,
                                kd_weight: float = 0.2, kind: str = "forward_kl", temperature: float = 1.0,
                                ignore_index: int = -100, **divergence_options) -> tuple[Tensor, Tensor, Tensor]:
    """`distillation_loss` on fully materialised logits [B, T, V], unchunked: the fused path's yardstick.

    divergence_options: beta, alpha (as in `token_divergence`).
    """
    vocab = student_logits.shape[-1]
    mask = labels != ignore_index
    n_valid = max(int(mask.sum()), 1)
    # Sum / n_valid rather than reduction="mean", which is NaN when every position is ignored.
    flat_logits = student_logits.reshape(-1, vocab)
    flat_logits = flat_logits.to(torch.promote_types(flat_logits.dtype, torch.float32))
    ce = F.cross_entropy(flat_logits, labels.reshape(-1), ignore_index=ignore_index, reduction="sum") / n_valid
    if kd_weight == 0:
        return ce, ce, ce.new_zeros(())
    kd = divergence(student_logits, teacher_logits, kind, mask=mask, temperature=temperature,
                    **divergence_options)
    return ce + kd_weight * kd, ce, kd
