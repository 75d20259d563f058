"""Universal logit distillation (ULD): distillation between any two tokenizers.

Boizard et al., "Towards Cross-Tokenizer Distillation: the Universal Logit Distillation Loss",
arXiv 2402.12030; the formula and settings as docs/distillation.md ("Teacher signals across
tokenizers") writes them down. The loss is the L1 distance between the two distributions'
probabilities sorted in decreasing order (a Wasserstein distance under a uniform cost), the smaller
vocabulary zero-padded; positions are paired by index, as in the original, so it needs no alignment
and no projector.

What it costs is sorting: per position, the student's whole distribution and the teacher's top
entries, at 50k–152k entries (docs/families.md has the figures and what was tried).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distiller.dskd import Side
from distiller.losses import check_chunk_size, log_probs, positions_per_chunk, weight_and_bias


def uld_distance(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Σ_i |sort↓(q)_i − sort↓(p)_i| per position, [N, V_s] and [N, V_t] -> [N]; the smaller
    vocabulary is zero-padded. In [0, 2]; the teacher is a constant."""
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same positions")
    q = log_probs(student_logits, temperature).exp().sort(-1, descending=True).values
    with torch.no_grad():
        p = log_probs(teacher_logits, temperature).exp().sort(-1, descending=True).values
    width = max(q.shape[-1], p.shape[-1])
    q, p = F.pad(q, (0, width - q.shape[-1])), F.pad(p, (0, width - p.shape[-1]))
    return (q - p.to(q.dtype)).abs().sum(-1)


def sorted_l1(q: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """(``uld_distance`` of two probability rows [N, V_q], [N, V_p] -> [N], its gradient in q [N, V_q]).

    Beyond the smaller vocabulary the zero-padded side meets only the larger side's tail, whose
    order does not matter: Σ_{i ≥ k} |0 − x_(i)| = Σ x − Σ_{i < k} x_(i), with k the smaller size.
    So only the larger side's top k are sorted (a partial sort), never all of it: at 152k against
    50k entries this is the step's largest saving (docs/families.md). The gradient is the sign of
    each sorted difference put back at its token, and 1 on the tail of q when q is the larger side."""
    k = min(q.shape[-1], p.shape[-1])
    q_top, where = q.topk(k, dim=-1) if q.shape[-1] > k else q.sort(dim=-1, descending=True)
    p_top = p.topk(k, dim=-1).values if p.shape[-1] > k else p.sort(dim=-1, descending=True).values
    difference = q_top - p_top
    tails = (q.sum(-1) - q_top.sum(-1)) + (p.sum(-1) - p_top.sum(-1))  # at most one is not 0
    grad = torch.ones_like(q) if q.shape[-1] > k else torch.empty_like(q)
    return difference.abs().sum(-1) + tails, grad.scatter_(-1, where, difference.sign())


class _CrossEntropyULD(torch.autograd.Function):
    """(Σ CE, Σ ULD over the aligned positions) through the student's head, each gradient formed
    chunk by chunk in the forward (as losses.CrossEntropyForwardKL): nothing V-sized is kept for
    backward and nothing (the teacher's head, the sorts) runs twice. The ULD gradient of the logits
    is softmax's Jacobian applied to ``sorted_l1``'s: q_τ ⊙ (g − Σ q_τ g) / τ."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, teacher_hidden, teacher_weight, teacher_bias, aligned,
                temperature: float, chunk: int):
        want = ctx.needs_input_grad[:3]
        compute = torch.promote_types(hidden.dtype, torch.float32)
        grads = [[torch.zeros_like(x, dtype=compute) if w else None for x, w in zip((hidden, weight, bias), want)]
                 for _ in range(2)]  # of Σ CE, of Σ ULD
        sums = torch.zeros(2, dtype=torch.float64, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h, y, a = hidden[start:start + chunk], targets[start:start + chunk], aligned[start:start + chunk]
            logits = F.linear(h, weight, bias).to(compute)
            log_q = F.log_softmax(logits, dim=-1)
            sums[0] -= log_q.gather(-1, y.unsqueeze(-1)).sum().double()
            q = log_q.exp()
            del log_q
            teacher_logits = F.linear(teacher_hidden[start:start + chunk].to(teacher_weight.dtype), teacher_weight,
                                      teacher_bias).to(compute)
            q_t = q if temperature == 1.0 else F.softmax(logits / temperature, dim=-1)
            distance, g = sorted_l1(q_t, F.softmax(teacher_logits / temperature, dim=-1))
            del teacher_logits, logits
            sums[1] += distance.masked_fill(~a, 0.0).sum().double()
            g = q_t * (g - (q_t * g).sum(-1, keepdim=True)) / temperature
            g[~a] = 0.0
            q[torch.arange(len(y), device=y.device), y] -= 1  # now CE's gradient, softmax − onehot
            for (grad_h, grad_w, grad_b), grad in zip(grads, (q, g)):
                if grad_h is not None:
                    grad_h[start:start + chunk] = grad @ weight.to(compute)
                if grad_w is not None:
                    grad_w.addmm_(grad.T, h.to(compute))
                if grad_b is not None:
                    grad_b += grad.sum(0)
        ctx.save_for_backward(*(g if g is not None else None for part in grads for g in part))
        ce, distance = sums.to(compute).unbind()
        return ce, distance

    @staticmethod
    def backward(ctx, grad_ce, grad_distance):
        saved = ctx.saved_tensors
        out = [None if a is None else a * grad_ce.to(a.dtype) + b * grad_distance.to(b.dtype)
               for a, b in zip(saved[:3], saved[3:])]
        return (*out, None, None, None, None, None, None, None)


def uld_loss(student: Side, teacher: Side, *, temperature: float = 1.0, chunk_size: int | None = 1024,
             ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """(CE of the student, mean ULD distance) for two tokenizations of the same text.

    Student position i is paired with teacher position i wherever both have a target (ULD's
    original pairing by index; the teacher's sequence is cut or padded to the student's length).
    The CE is a mean over the student's valid positions, the distance over the paired ones."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    check_chunk_size(chunk_size)
    n_s, n_t = student.labels.shape[1], teacher.labels.shape[1]
    t_hidden = teacher.hidden.detach()[:, :n_s]
    t_valid = (teacher.labels != ignore_index)[:, :n_s]
    if n_t < n_s:  # fewer teacher positions: the rest of the student's have no counterpart
        t_hidden = F.pad(t_hidden, (0, 0, 0, n_s - n_t))
        t_valid = torch.cat([t_valid, t_valid.new_zeros(t_valid.shape[0], n_s - n_t)], dim=1)
    s_valid = student.labels != ignore_index
    aligned = (s_valid & t_valid)[s_valid]
    weight, bias = weight_and_bias(student.head)
    t_weight, t_bias = (t.detach() if t is not None else None for t in weight_and_bias(teacher.head))
    hidden = student.hidden[s_valid]
    chunk = positions_per_chunk(chunk_size, hidden.shape[0], max(weight.shape[0], t_weight.shape[0]))
    ce, distance = _CrossEntropyULD.apply(hidden, weight, bias, student.labels[s_valid], t_hidden[s_valid],
                                          t_weight, t_bias, aligned, temperature, chunk)
    return ce / max(int(s_valid.sum()), 1), distance / max(int(aligned.sum()), 1)
