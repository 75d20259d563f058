"""Divergences and the fused distillation loss, checked against direct computations on small tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distiller.losses import (
    DIVERGENCES,
    distillation_loss,
    distillation_loss_reference,
    divergence,
    token_divergence,
)

OPTIONS = {"beta": 0.3, "alpha": 0.2}


def logits(*shape, scale=3.0, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=generator)).to(dtype)


def softmax_np(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def kl_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * (np.log(a) - np.log(b))).sum(-1)


def direct(kind: str, student: torch.Tensor, teacher: torch.Tensor, beta=0.3, alpha=0.2, temperature=1.0):
    """The definitions written out with explicit probabilities (numpy, float64)."""
    q = softmax_np(student.detach().numpy().astype(np.float64) / temperature)
    p = softmax_np(teacher.detach().numpy().astype(np.float64) / temperature)
    if kind == "forward_kl":
        return kl_np(p, q)
    if kind == "reverse_kl":
        return kl_np(q, p)
    if kind == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * kl_np(p, m) + (1 - beta) * kl_np(q, m)
    if kind == "skew_kl":
        return kl_np(p, alpha * p + (1 - alpha) * q)
    if kind == "skew_reverse_kl":
        return kl_np(q, alpha * q + (1 - alpha) * p)
    if kind == "tv":
        return 0.5 * np.abs(p - q).sum(-1)
    raise AssertionError(kind)


# --- divergences -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", DIVERGENCES)
def test_each_divergence_matches_its_definition(kind):
    student, teacher = logits(6, 11, seed=1), logits(6, 11, seed=2)
    got = token_divergence(student, teacher, kind, **OPTIONS)
    assert got.shape == (6,)
    np.testing.assert_allclose(got.numpy(), direct(kind, student, teacher), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_zero_when_equal_and_non_negative_otherwise(kind):
    same = logits(5, 13, seed=3)
    assert token_divergence(same, same.clone(), kind, **OPTIONS).abs().max() < 1e-12
    for seed in range(4):
        student, teacher = logits(8, 13, seed=seed, scale=5.0), logits(8, 13, seed=seed + 10, scale=5.0)
        assert (token_divergence(student, teacher, kind, **OPTIONS) >= -1e-12).all()


def test_forward_kl_is_reverse_kl_with_arguments_swapped():
    a, b = logits(7, 9, seed=4), logits(7, 9, seed=5)
    torch.testing.assert_close(token_divergence(a, b, "forward_kl"), token_divergence(b, a, "reverse_kl"))


def test_jsd_symmetric_at_half_and_bounded_by_log2():
    a, b = logits(7, 9, seed=6, scale=30.0), logits(7, 9, seed=7, scale=30.0)
    ab, ba = token_divergence(a, b, "jsd", beta=0.5), token_divergence(b, a, "jsd", beta=0.5)
    torch.testing.assert_close(ab, ba)
    assert (ab <= math.log(2) + 1e-12).all() and ab.max() > 0.5  # sharp, different: near the bound


def test_jsd_ends_are_forward_and_reverse_kl_and_the_interior_scales_them_down():
    a, b = logits(7, 9, seed=8), logits(7, 9, seed=9)
    forward, reverse = token_divergence(a, b, "forward_kl"), token_divergence(a, b, "reverse_kl")
    torch.testing.assert_close(token_divergence(a, b, "jsd", beta=0.0), forward)
    torch.testing.assert_close(token_divergence(a, b, "jsd", beta=1.0), reverse)
    eps = 1e-7  # the next-order term is O(β · max p/q), so the limit needs a small β to show
    torch.testing.assert_close(token_divergence(a, b, "jsd", beta=eps), eps * forward, rtol=1e-3, atol=0)
    torch.testing.assert_close(token_divergence(a, b, "jsd", beta=1 - eps), eps * reverse, rtol=1e-3, atol=0)


def test_tv_in_unit_interval_and_one_for_disjoint_support():
    a, b = logits(20, 9, seed=10, scale=10.0), logits(20, 9, seed=11, scale=10.0)
    tv = token_divergence(a, b, "tv")
    assert ((tv >= 0) & (tv <= 1)).all()
    disjoint_s = torch.tensor([[100.0, -100.0]], dtype=torch.float64)
    assert token_divergence(disjoint_s, -disjoint_s, "tv").item() == pytest.approx(1.0)


def test_skew_at_alpha_zero_is_plain_kl():
    a, b = logits(7, 9, seed=12), logits(7, 9, seed=13)
    torch.testing.assert_close(token_divergence(a, b, "skew_kl", alpha=0.0),
                               token_divergence(a, b, "forward_kl"))
    torch.testing.assert_close(token_divergence(a, b, "skew_reverse_kl", alpha=0.0),
                               token_divergence(a, b, "reverse_kl"))


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_temperature_divides_logits_and_nothing_else(kind):
    a, b = logits(5, 9, seed=14), logits(5, 9, seed=15)
    torch.testing.assert_close(token_divergence(a, b, kind, temperature=2.0, **OPTIONS),
                               token_divergence(a / 2, b / 2, kind, **OPTIONS))
    np.testing.assert_allclose(token_divergence(a, b, kind, temperature=2.0, **OPTIONS).numpy(),
                               direct(kind, a, b, temperature=2.0), rtol=1e-10)


def test_bad_options_are_rejected():
    a = logits(2, 3)
    with pytest.raises(ValueError, match="forward_kl.*reverse_kl.*jsd.*skew_kl.*skew_reverse_kl.*tv"):
        token_divergence(a, a, "kl")
    for bad in ({"beta": -0.1}, {"beta": 1.5}, {"alpha": -0.01}, {"alpha": 1.01}, {"beta": float("nan")},
                {"temperature": 0.0}):
        with pytest.raises(ValueError):
            divergence(a, a, "jsd", **bad)
    with pytest.raises(ValueError):
        divergence(a, a, chunk_size=0)
    with pytest.raises(ValueError):
        divergence(a, logits(2, 4))


def test_half_precision_inputs_give_float32():
    a, b = logits(4, 9, dtype=torch.bfloat16), logits(4, 9, seed=1, dtype=torch.bfloat16)
    assert token_divergence(a, b).dtype == torch.float32


# --- masking, reduction, gradients ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", DIVERGENCES)
def test_masked_positions_do_not_count(kind):
    student, teacher = logits(3, 5, 9, seed=16), logits(3, 5, 9, seed=17)
    mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(0)) > 0.4
    student[~mask] = torch.tensor([1e30, -math.inf, math.nan] * 3, dtype=torch.float64)
    teacher[~mask] = math.nan
    student.requires_grad_(True)
    got = divergence(student, teacher, kind, mask=mask, **OPTIONS)
    expected = direct(kind, student[mask], teacher[mask]).mean()
    assert got.item() == pytest.approx(expected, rel=1e-10)
    got.backward()
    assert torch.isfinite(student.grad).all() and (student.grad[~mask] == 0).all()


def test_all_masked_is_zero_with_a_gradient():
    student = logits(2, 3, 7).requires_grad_(True)
    got = divergence(student, logits(2, 3, 7, seed=1), mask=torch.zeros(2, 3, dtype=torch.bool), chunk_size=2)
    assert got.item() == 0.0 and got.requires_grad
    got.backward()
    assert (student.grad == 0).all()


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_finite_gradients_for_extreme_and_infinite_logits(kind):
    student = logits(6, 10, seed=18).sign() * 1e4
    teacher = logits(6, 10, seed=19).sign() * 1e4
    student[:, -2:] = teacher[:, -2:] = -math.inf  # a masked-out tail of the vocabulary, in both
    for dtype in (torch.float32, torch.float64):
        s = student.to(dtype).requires_grad_(True)
        value = divergence(s, teacher.to(dtype), kind, **OPTIONS)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_gradients_reach_the_student_only(kind):
    student, teacher = logits(4, 9, seed=20).requires_grad_(True), logits(4, 9, seed=21).requires_grad_(True)
    divergence(student, teacher, kind, **OPTIONS).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 1000])
def test_chunked_equals_unchunked(kind, chunk_size):
    mask = torch.rand(3, 8, generator=torch.Generator().manual_seed(1)) > 0.3  # 17 valid of 24
    values, grads = [], []
    for chunk in (None, chunk_size):
        student = logits(3, 8, 11, seed=22).requires_grad_(True)
        value = divergence(student, logits(3, 8, 11, seed=23), kind, mask=mask, chunk_size=chunk, **OPTIONS)
        value.backward()
        values.append(value)
        grads.append(student.grad)
    torch.testing.assert_close(values[1], values[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-14)


# --- the fused head path -------------------------------------------------------------------------------

def fused_problem(seed=0, batch=2, length=9, hidden=6, teacher_hidden=5, vocab=13, bias=True):
    g = torch.Generator().manual_seed(seed)
    problem = {
        "student_hidden": torch.randn(batch, length, hidden, generator=g, dtype=torch.float64),
        "student_head": nn.Linear(hidden, vocab, bias=bias, dtype=torch.float64),
        "teacher_hidden": torch.randn(batch, length, teacher_hidden, generator=g, dtype=torch.float64),
        "teacher_head": 2 * torch.randn(vocab, teacher_hidden, generator=g, dtype=torch.float64),
        "labels": torch.randint(0, vocab, (batch, length), generator=g),
    }
    problem["labels"][0, -3:] = -100  # padding
    problem["labels"][1, 0] = -100  # an ignored prompt token
    problem["student_hidden"].requires_grad_(True)
    return problem


def reference_of(problem, **kw):
    head = problem["student_head"]
    student_logits = head(problem["student_hidden"])
    teacher_logits = problem["teacher_hidden"] @ problem["teacher_head"].T
    return distillation_loss_reference(student_logits, teacher_logits, problem["labels"], **kw)


def grads_of(problem):
    head = problem["student_head"]
    grads = [problem["student_hidden"].grad, head.weight.grad]
    if head.bias is not None:
        grads.append(head.bias.grad)
    problem["student_hidden"].grad = None
    head.zero_grad(set_to_none=True)
    return grads


KINDS_AND_TEMPERATURES = [(kind, 1.0) for kind in DIVERGENCES] + [("forward_kl", 2.0), ("jsd", 0.7)]


@pytest.mark.parametrize("kind,temperature", KINDS_AND_TEMPERATURES)
@pytest.mark.parametrize("chunk_size", [1, 5, 1024, None])
def test_fused_equals_reference(kind, temperature, chunk_size):
    problem = fused_problem()
    kw = dict(kd_weight=0.2, kind=kind, temperature=temperature, **OPTIONS)
    expected = reference_of(problem, **kw)
    expected[0].backward()
    expected_grads = grads_of(problem)
    got = distillation_loss(**problem, chunk_size=chunk_size, **kw)
    got[0].backward()
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    for g, e in zip(grads_of(problem), expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    assert problem["teacher_hidden"].grad is None


def test_reference_ce_is_torch_cross_entropy():
    problem = fused_problem(bias=False)
    total, ce, kd = distillation_loss(**problem)
    student_logits = problem["student_head"](problem["student_hidden"])
    expected_ce = F.cross_entropy(student_logits.reshape(-1, 13), problem["labels"].reshape(-1))
    torch.testing.assert_close(ce, expected_ce)
    torch.testing.assert_close(total, ce + 0.2 * kd)


def test_kd_weight_zero_never_touches_the_teacher():
    problem = fused_problem()
    problem.update(teacher_hidden=None, teacher_head=None)
    total, ce, kd = distillation_loss(**problem, kd_weight=0.0, chunk_size=4)
    assert kd.item() == 0.0 and total.item() == ce.item()
    student_logits = problem["student_head"](problem["student_hidden"])
    _, expected_ce, _ = distillation_loss_reference(student_logits, None, problem["labels"], kd_weight=0.0)
    torch.testing.assert_close(total, expected_ce)
    total.backward()
    assert problem["student_head"].weight.grad is not None


def test_head_as_module_tensor_or_weight_and_bias():
    problem = fused_problem()
    head = problem.pop("student_head")
    as_module = distillation_loss(student_head=head, **problem)
    torch.testing.assert_close(distillation_loss(student_head=(head.weight, head.bias), **problem), as_module)
    torch.testing.assert_close(distillation_loss(student_head=head.weight, **problem),
                               distillation_loss(student_head=(head.weight, None), **problem))
    teacher_module = nn.Linear(5, 13, bias=False, dtype=torch.float64)
    with torch.no_grad():
        teacher_module.weight.copy_(problem["teacher_head"])
    as_teacher_module = distillation_loss(student_head=head, **{**problem, "teacher_head": teacher_module})
    torch.testing.assert_close(as_teacher_module, as_module)


def test_tied_embedding_gets_both_gradients():
    vocab, hidden = 13, 6
    g = torch.Generator().manual_seed(3)
    embedding = nn.Embedding(vocab, hidden, dtype=torch.float64)
    tokens = torch.randint(0, vocab, (2, 9), generator=g)
    mixer = torch.randn(hidden, hidden, generator=g, dtype=torch.float64)
    teacher_hidden = torch.randn(2, 9, 4, generator=g, dtype=torch.float64)
    teacher_head = torch.randn(vocab, 4, generator=g, dtype=torch.float64)
    labels = tokens.roll(-1, dims=1)
    labels[:, -1] = -100

    def run(fused: bool):
        embedding.zero_grad(set_to_none=True)
        hidden_states = torch.tanh(embedding(tokens) @ mixer)
        if fused:  # the head *is* the embedding module's weight
            loss = distillation_loss(hidden_states, embedding.weight, teacher_hidden, teacher_head, labels,
                                     chunk_size=5)[0]
        else:
            student_logits, teacher_logits = hidden_states @ embedding.weight.T, teacher_hidden @ teacher_head.T
            loss = distillation_loss_reference(student_logits, teacher_logits, labels)[0]
        loss.backward()
        return loss, embedding.weight.grad.clone()

    (fused_loss, fused_grad), (ref_loss, ref_grad) = run(True), run(False)
    torch.testing.assert_close(fused_loss, ref_loss)
    torch.testing.assert_close(fused_grad, ref_grad)


def test_fused_with_every_label_ignored_is_zero_with_a_gradient():
    problem = fused_problem()
    problem["labels"][:] = -100
    total, ce, kd = distillation_loss(**problem)
    assert total.item() == ce.item() == kd.item() == 0.0
    total.backward()
    assert (problem["student_hidden"].grad == 0).all()


def test_fused_rejects_a_missing_teacher_and_mismatched_labels():
    problem = fused_problem()
    with pytest.raises(ValueError, match="teacher"):
        distillation_loss(**{**problem, "teacher_hidden": None})
    with pytest.raises(ValueError, match="labels"):
        distillation_loss(**{**problem, "labels": problem["labels"][:, :-1]})


def saved_for_backward(fn):
    """Shapes of the tensors autograd keeps for backward while fn() runs (then backpropagates)."""
    shapes = []

    def pack(tensor):
        shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        total = fn()[0]
    total.backward()
    return shapes


def test_fused_forward_keeps_nothing_logits_sized_for_backward():
    """The memory property, deterministically: only chunk inputs and weights wait for backward.

    (Peak RSS of forward + backward at 4×256×50k is measured by bench/loss_memory.py; RSS depends on
    the C allocator and takes seconds, so it stays out of the tests.)
    """
    batch, length, hidden_size, vocab = 4, 32, 8, 2048
    hidden = torch.randn(batch, length, hidden_size, requires_grad=True)
    head = torch.randn(vocab, hidden_size, requires_grad=True)
    teacher_hidden, teacher_head = torch.randn(batch, length, hidden_size), torch.randn(vocab, hidden_size)
    labels = torch.randint(0, vocab, (batch, length))
    logits_size = batch * length * vocab

    fused = saved_for_backward(lambda: distillation_loss(hidden, head, teacher_hidden, teacher_head, labels,
                                                         chunk_size=16))
    assert max(math.prod(shape) for shape in fused) < logits_size / 8  # the head weight is the biggest
    reference = saved_for_backward(lambda: distillation_loss_reference(
        hidden @ head.T, teacher_hidden @ teacher_head.T, labels))
    assert sum(math.prod(shape) >= logits_size for shape in reference) >= 2
