"""Dual-space KD, cross-model attention and ULD (distiller/dskd.py), the cross-tokenizer data and
bits per byte (distiller/cross.py): checked on small tensors against direct computations, on a
hand-made pair of tokenizations, and end to end on the tiny demo world's two tokenizers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distiller.dskd import KD_RATE, Projectors, Side, cma_loss, dual_space_loss
from distiller.uld import uld_distance, uld_loss
from distiller.losses import DIVERGENCES, divergence

OPTIONS = {"beta": 0.3, "alpha": 0.2}


def randn(*shape, seed=0, scale=1.0, grad=False):
    x = scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.requires_grad_(grad)


def pair(d_s=6, d_t=10, vocab=13, batch=2, length=5, seed=0):
    """Hidden states, heads (as leaf tensors, so that any gradient reaching them shows) and labels."""
    torch.manual_seed(seed)
    labels = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    labels[0, -1] = -100  # one padded position
    return {"student_hidden": randn(batch, length, d_s, seed=seed + 1, grad=True),
            "student_head": randn(vocab, d_s, seed=seed + 2, grad=True),
            "teacher_hidden": randn(batch, length, d_t, seed=seed + 3, grad=True),
            "teacher_head": randn(vocab, d_t, seed=seed + 4, grad=True), "labels": labels}


def projectors(d_s=6, d_t=10, cross_attention=False):
    torch.manual_seed(0)
    return Projectors(d_s, d_t, cross_attention).double()


def grads(*tensors):
    return [None if t.grad is None else float(t.grad.abs().sum()) for t in tensors]


# --- dual-space KD ----------------------------------------------------------------------------

def test_projector_shapes_and_terms_are_scalars():
    proj = projectors(6, 10, cross_attention=True)
    assert proj.t2s(torch.zeros(3, 10, dtype=torch.float64)).shape == (3, 6)
    assert proj.s2t(torch.zeros(3, 6, dtype=torch.float64)).shape == (3, 10)
    assert proj.query(torch.zeros(3, 12, dtype=torch.float64)).shape == (3, 20)
    assert Projectors(6, 10).query is None
    terms = dual_space_loss(**pair(), projectors=proj)
    for value in (terms.student_ce, terms.t2s_ce, terms.student_kd, terms.teacher_kd, terms.kd, terms.total()):
        assert value.shape == () and torch.isfinite(value)
    assert terms.student_kd > 0 and terms.teacher_kd > 0
    torch.testing.assert_close(terms.total(), (1 - KD_RATE) * terms.student_ce + KD_RATE * terms.kd)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_each_term_sends_gradient_only_where_dskd_says(chunk_size):
    """Student-space CE trains the projector t2s and nothing else (the student's head is shared, not
    trained by it); the student-space KD trains the student only (its target is detached); the
    teacher-space KD trains the student's states and s2t, never the teacher's head."""
    expected = {  # term: which of (h_S, W_S, h_T, W_T, t2s, s2t) get a gradient
        "t2s_ce": (False, False, False, False, True, False),
        "student_kd": (True, True, False, False, False, False),
        "teacher_kd": (True, False, False, False, False, True),
        "student_ce": (True, True, False, False, False, False),
    }
    for term, wanted in expected.items():
        data, proj = pair(), projectors()
        getattr(dual_space_loss(**data, projectors=proj, chunk_size=chunk_size), term).backward()
        got = grads(data["student_hidden"], data["student_head"], data["teacher_hidden"], data["teacher_head"],
                    proj.t2s.weight, proj.s2t.weight)
        assert [g is not None and g > 0 for g in got] == list(wanted), (term, got)


def test_chunking_does_not_change_the_terms():
    data = pair(length=7)
    whole = dual_space_loss(**data, projectors=projectors(), chunk_size=None)
    chunked = dual_space_loss(**data, projectors=projectors(), chunk_size=3)
    for name in ("student_ce", "t2s_ce", "student_kd", "teacher_kd", "agreement"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name))


def identity_projectors(dim):
    proj = Projectors(dim, dim).double()
    with torch.no_grad():
        for linear in (proj.t2s, proj.s2t):
            linear.weight.copy_(torch.eye(dim, dtype=torch.float64))
            linear.bias.zero_()
    return proj


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_with_identical_spaces_dual_space_kd_is_the_plain_divergence(kind):
    """One head and identity projectors: the teacher seen through the student's head is the teacher,
    so the student-space KD is plain KD with that divergence, the teacher-space KD is forward KL
    (DSKD's fixed choice there) and the projector's CE is the teacher's own CE."""
    data = pair(d_s=8, d_t=8)
    head = data["student_head"].detach()
    labels = data["labels"]
    terms = dual_space_loss(data["student_hidden"], head, data["teacher_hidden"], head, labels,
                            identity_projectors(8), kind=kind, **OPTIONS)
    z_s, z_t = data["student_hidden"] @ head.T, data["teacher_hidden"] @ head.T
    mask = labels != -100
    torch.testing.assert_close(terms.student_kd, divergence(z_s, z_t, kind, mask=mask, **OPTIONS))
    torch.testing.assert_close(terms.teacher_kd, divergence(z_s, z_t, "forward_kl", mask=mask))
    torch.testing.assert_close(terms.t2s_ce, F.cross_entropy(z_t[mask], labels[mask]))
    torch.testing.assert_close(terms.student_ce, F.cross_entropy(z_s[mask], labels[mask]))
    same = dual_space_loss(data["teacher_hidden"], head, data["teacher_hidden"], head, labels,
                           identity_projectors(8), kind=kind, **OPTIONS)
    assert abs(same.student_kd.item()) < 1e-12 and abs(same.teacher_kd.item()) < 1e-12



def test_projectors_from_the_heads_carry_the_teachers_logits_into_the_other_space():
    """P_t2s = pinv(W_S)·W_T is the least-squares map: the teacher's states projected and read by the
    student's head give the teacher's logits more nearly than any other linear map (and far more
    nearly than the random start); s2t likewise the other way."""
    w_s = randn(40, 6, seed=1)
    w_t = w_s @ randn(6, 10, seed=2) + randn(40, 10, seed=6, scale=0.1)  # heads that mostly agree, as trained ones
    h_t, h_s = randn(200, 10, seed=3), randn(200, 6, seed=4)
    heads = Projectors.from_heads(w_s, w_t).double()
    torch.testing.assert_close(heads.t2s.weight, torch.linalg.lstsq(w_s, w_t).solution)
    torch.testing.assert_close(heads.s2t.weight, torch.linalg.lstsq(w_t, w_s).solution)
    assert not heads.t2s.bias.any() and not heads.s2t.bias.any()

    def errors(proj):
        with torch.no_grad():
            return (float(((proj.t2s(h_t) @ w_s.T - h_t @ w_t.T) ** 2).mean()),
                    float(((proj.s2t(h_s) @ w_t.T - h_s @ w_s.T) ** 2).mean()))

    t2s, s2t = errors(heads)
    t2s_random, s2t_random = errors(projectors(6, 10))
    assert t2s < 0.05 * t2s_random and s2t < 0.05 * s2t_random
    perturbed = Projectors.from_heads(w_s, w_t).double()
    with torch.no_grad():
        perturbed.t2s.weight.add_(1e-2 * randn(6, 10, seed=5))
    assert errors(perturbed)[0] > t2s  # a nearby map does worse: it is the optimum


def test_projectors_from_one_head_are_the_identity_and_dskd_is_plain_kd():
    data = pair(d_s=8, d_t=8)
    head = data["student_head"].detach()
    proj = Projectors.from_heads(head, head).double()
    for linear in (proj.t2s, proj.s2t):
        torch.testing.assert_close(linear.weight, torch.eye(8, dtype=torch.float64))
    terms = dual_space_loss(data["student_hidden"], head, data["teacher_hidden"], head, data["labels"], proj)
    mask = data["labels"] != -100
    expected = divergence(data["student_hidden"] @ head.T, data["teacher_hidden"] @ head.T, "forward_kl", mask=mask)
    torch.testing.assert_close(terms.student_kd, expected)


def test_projectors_from_two_vocabularies_use_the_rows_of_shared_tokens():
    w_s, w_t = randn(9, 4, seed=1), randn(12, 5, seed=2)
    pairs = torch.tensor([0, 2, 3, 5, 6, 8]), torch.tensor([11, 1, 4, 2, 7, 0])
    proj = Projectors.from_heads(w_s, w_t, cross_attention=True, token_pairs=pairs).double()
    sliced = Projectors.from_heads(w_s[pairs[0]], w_t[pairs[1]]).double()
    torch.testing.assert_close(proj.t2s.weight, sliced.t2s.weight)
    torch.testing.assert_close(proj.s2t.weight, sliced.s2t.weight)
    assert proj.query is not None and proj.query.weight.shape == (10, 8)  # left at nn.Linear's default
    with pytest.raises(ValueError, match="token_pairs"):
        Projectors.from_heads(w_s, w_t)


# --- cross-model attention on a hand-made pair of tokenizations -------------------------------

STRINGS = ["<e>", "ab", "c", "de", "d", "e"]
STUDENT_VOCAB = ["<e>", "ab", "c", "de", "d", "e"]
TEACHER_VOCAB = ["e", "d", "c", "ab", "<e>", "de"]  # other ids for the same strings


def hand_made(student_labels=("ab", "c", "de")):
    """The text "abcde" read as  <e> ab c de  by the student and  <e> ab c d e  by the teacher (plus one
    padded teacher position). Every string has one random unit code; each model embeds its tokens by
    their strings' codes, so the query projector can be the identity. The teacher's state at a
    position is the code of what it predicts there."""
    dim = 16
    codes = dict(zip(STRINGS, torch.linalg.qr(randn(dim, dim, seed=5))[0][: len(STRINGS)]))
    s_ids = {s: i for i, s in enumerate(STUDENT_VOCAB)}
    t_ids = {s: i for i, s in enumerate(TEACHER_VOCAB)}
    s_inputs = ["<e>", *student_labels[:-1]]
    t_inputs, t_labels = ["<e>", "ab", "c", "d"], ["ab", "c", "d", "e"]
    scale = 12.0  # sharp attention: a full match outscores a half match by far
    student_embedding = scale * torch.stack([codes[s] for s in STUDENT_VOCAB])
    teacher_embedding = torch.stack([codes[s] for s in TEACHER_VOCAB])
    student = Side(hidden=randn(1, 3, dim, seed=6, grad=True), head=student_embedding / scale,
                   inputs=torch.tensor([[s_ids[s] for s in s_inputs]]),
                   labels=torch.tensor([[s_ids[s] for s in student_labels]]), embedding=student_embedding)
    teacher = Side(hidden=torch.stack([codes[s] for s in t_labels] + [torch.zeros(dim, dtype=torch.float64)])[None],
                   head=teacher_embedding, inputs=torch.tensor([[t_ids[s] for s in t_inputs] + [0]]),
                   labels=torch.tensor([[t_ids[s] for s in t_labels] + [-100]]), embedding=teacher_embedding)
    proj = Projectors(dim, dim, cross_attention=True).double()
    with torch.no_grad():
        for linear in (proj.t2s, proj.s2t, proj.query):
            linear.weight.copy_(torch.eye(linear.weight.shape[0], dtype=torch.float64))
            linear.bias.zero_()
    return student, teacher, proj


def test_cma_aligns_a_hand_made_pair_of_tokenizations():
    student, teacher, proj = hand_made()
    terms, (t2s, s2t) = cma_loss(student, teacher, proj)
    assert t2s.shape == (1, 3, 5) and s2t.shape == (1, 5, 3)
    # student (<e>→ab) ↔ teacher (<e>→ab); (ab→c) ↔ (ab→c); (c→de) ↔ (c→d), the one sharing its input
    assert t2s[0].argmax(-1).tolist() == [0, 1, 2]
    assert (t2s[0].max(-1).values > 0.99).all()
    assert t2s[0, :, 4].max() == 0.0, "the padded teacher position gets no attention"
    torch.testing.assert_close(t2s.sum(-1), torch.ones(1, 3, dtype=torch.float64))
    # the reverse direction is a softmax over student positions; teacher (d→e) matches none: uniform
    assert s2t[0, :3].argmax(-1).tolist() == [0, 1, 2]
    torch.testing.assert_close(s2t[0, 3], torch.full((3,), 1 / 3, dtype=torch.float64))
    # The teacher's states carried to the student predict ab, c, and "d" where the label is "de":
    # the student-space KD keeps the two positions where the alignment found the label.
    assert terms.agreement.item() == pytest.approx(2 / 3)
    relabelled, *_ = cma_loss(*hand_made(student_labels=("ab", "c", "d")))
    assert relabelled.agreement.item() == 1.0


def test_cma_gradients_reach_the_student_and_projectors_not_the_teacher():
    student, teacher, proj = hand_made()
    head = student.head.clone().requires_grad_(True)
    t_hidden, t_head = teacher.hidden.clone().requires_grad_(True), teacher.head.clone().requires_grad_(True)
    student.head, teacher.hidden, teacher.head = head, t_hidden, t_head
    for linear in (proj.t2s, proj.s2t, proj.query):
        linear.weight.data += 0.01 * randn(*linear.weight.shape, seed=9)  # off the identity: every path is live
    terms, _ = cma_loss(student, teacher, proj)
    terms.t2s_ce.backward()
    assert head.grad is None and student.hidden.grad is None and t_hidden.grad is None and t_head.grad is None
    assert proj.t2s.weight.grad.abs().sum() > 0 and proj.query.weight.grad.abs().sum() > 0
    terms, _ = cma_loss(student, teacher, proj)
    (terms.student_kd + terms.teacher_kd + terms.student_ce).backward()
    assert student.hidden.grad.abs().sum() > 0 and head.grad.abs().sum() > 0 and proj.s2t.weight.grad.abs().sum() > 0
    assert t_hidden.grad is None and t_head.grad is None


# --- universal logit distillation ---------------------------------------------------------------

def uld_numpy(student_logits: np.ndarray, teacher_logits: np.ndarray) -> np.ndarray:
    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    q = -np.sort(-softmax(student_logits), axis=-1)
    p = -np.sort(-softmax(teacher_logits), axis=-1)
    width = max(q.shape[-1], p.shape[-1])
    q = np.pad(q, [(0, 0), (0, width - q.shape[-1])])
    p = np.pad(p, [(0, 0), (0, width - p.shape[-1])])
    return np.abs(q - p).sum(-1)


def test_uld_matches_the_sorted_l1_formula_and_ignores_token_ids():
    student, teacher = randn(5, 7, seed=1, scale=3.0), randn(5, 11, seed=2, scale=3.0)
    np.testing.assert_allclose(uld_distance(student, teacher).numpy(), uld_numpy(student.numpy(), teacher.numpy()),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(uld_distance(teacher, student).numpy(), uld_numpy(teacher.numpy(), student.numpy()))
    permuted = teacher[:, torch.randperm(11, generator=torch.Generator().manual_seed(3))]
    assert uld_distance(teacher, permuted).abs().max() < 1e-12  # same probabilities on other ids: distance 0


def test_uld_loss_pairs_positions_by_index_and_trains_only_the_student():
    s_hidden, s_head = randn(1, 4, 6, seed=1, grad=True), randn(9, 6, seed=2, grad=True)
    t_hidden, t_head = randn(1, 3, 5, seed=3, grad=True), randn(14, 5, seed=4, grad=True)
    s_labels, t_labels = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[5, -100, 7]])
    student = Side(s_hidden, s_head, torch.zeros_like(s_labels), s_labels)
    teacher = Side(t_hidden, t_head, torch.zeros_like(t_labels), t_labels)
    ce, distance = uld_loss(student, teacher, chunk_size=3)
    z_s = (s_hidden @ s_head.T)[0].detach().numpy()
    z_t = (t_hidden @ t_head.T)[0].detach().numpy()
    # positions 0 and 2 have a teacher target; 1 is padded there and 3 is past the teacher's end
    assert distance.item() == pytest.approx(uld_numpy(z_s[[0, 2]], z_t[[0, 2]]).mean(), rel=1e-12)
    assert ce.item() == pytest.approx(F.cross_entropy(s_hidden[0] @ s_head.T, s_labels[0]).item(), rel=1e-12)
    distance.backward()
    assert s_hidden.grad.abs().sum() > 0 and s_head.grad.abs().sum() > 0
    assert t_hidden.grad is None and t_head.grad is None


# --- the data side and bits per byte, with the tiny world's two tokenizers --------------------

@pytest.fixture(scope="module")
def tokenizers(tiny_world):
    from transformers import AutoTokenizer

    return (AutoTokenizer.from_pretrained(tiny_world.cross_student_dir),
            AutoTokenizer.from_pretrained(tiny_world.teacher_dir))


def test_shared_tokens_pair_the_ids_of_one_string_in_both_vocabularies(tokenizers):
    from distiller.step import shared_tokens

    student, teacher = tokenizers
    s_ids, t_ids = shared_tokens(student, teacher)
    assert len(s_ids) > len(student) // 2  # the demo's two byte-level BPEs share most tokens
    assert student.convert_ids_to_tokens(s_ids.tolist()) == teacher.convert_ids_to_tokens(t_ids.tolist())


def test_pairs_hold_the_same_text_in_both_tokenizations(tiny_world, tiny_store, tokenizers):
    from distiller.pairs import PAD, PairedBlocks, collate, split_rows
    from distiller.store import Blocks, TokenStore

    student_tok, teacher_tok = tokenizers
    stream = TokenStore(tiny_store(tiny_world.cross_student_dir)).stream("arithmetic", "validation")  # ASCII
    blocks = Blocks(stream, 33)
    rows = PairedBlocks(blocks, student_tok, teacher_tok, teacher_context=1000)
    teacher = [rows[i][33:].tolist() for i in range(len(rows))]
    for i, ids in enumerate(teacher):
        assert torch.equal(rows[i][:33], blocks[i])
        assert teacher_tok.decode(ids) == student_tok.decode(blocks[i].tolist())
    batch = collate([rows[i] for i in range(len(rows))], student_width=33)
    width = max(map(len, teacher))
    assert rows.cut == 0 and batch.shape == (len(rows), 33 + width)
    s_in, s_lab, t_in, t_lab = split_rows(batch, 33, teacher_tok.eos_token_id)
    assert torch.equal(s_in, batch[:, :32]) and torch.equal(s_lab, batch[:, 1:33])
    shortest = min(range(len(teacher)), key=lambda i: len(teacher[i]))
    n = len(teacher[shortest])
    assert t_lab[shortest, : n - 1].tolist() == teacher[shortest][1:] and (t_lab[shortest, n - 1:] == -100).all()
    assert (t_in >= 0).all() and (batch[shortest, 33 + n:] == PAD).all()
    short = PairedBlocks(blocks, student_tok, teacher_tok, teacher_context=width - 3)
    assert all(len(short[i]) <= 33 + width - 2 for i in range(len(short))) and short.cut > 0


def test_bits_per_byte_agrees_with_the_demo_builds_independent_count(tiny_world, tokenizers):
    """cross.domain_bits_per_byte (hidden states, chunked CE, batched windows) against the demo
    build's bits_per_byte (full logits, lm-eval's rolling windows) on the same text pieces."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from distiller.measure import domain_bits_per_byte, text_pieces
    from distiller.data import read_texts
    from harness.demo.checks import bits_per_byte

    student_tok, _ = tokenizers
    model = AutoModelForCausalLM.from_pretrained(tiny_world.cross_student_dir).eval()
    pieces = text_pieces(read_texts(tiny_world.domain_file("code", "validation.jsonl")), 300, 6)
    assert len(pieces) == 6 and all(0 < len(p) <= 300 for p in pieces)
    got = domain_bits_per_byte(model, student_tok, {"code": pieces}, 64, Accelerator(cpu=True), chunk_size=50,
                               batch_size=4)
    assert got["code"] == pytest.approx(bits_per_byte(model, student_tok, pieces, 64), rel=1e-5)


# --- end to end on the tiny world ----------------------------------------------------------------

ARGS = ["--steps", "8", "--interval", "4", "--save-every", "4", "--batch-size", "4", "--block-size", "64"]
DOMAIN_NAMES = ("code", "prose", "arithmetic", "records")


def weights_of(path):
    from safetensors.torch import load_file

    return load_file(path)


def same_tensors(a, b) -> bool:
    left, right = weights_of(a), weights_of(b)
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"  # one store: creating one takes seconds


@pytest.fixture(scope="module")
def cma_run(tiny_world, tmp_path_factory, tracking_uri):
    from harness.cli import main

    folder = tmp_path_factory.mktemp("dskd-cma")
    # No --teacher/--student: dskd-cma takes the demo teacher and the demo student with its own tokenizer.
    code = main(["distill", "--kd", "dskd-cma", *ARGS, "--out", str(folder / "run"), "--tracking-uri", tracking_uri])
    return code, folder / "run"


def test_dskd_cma_writes_a_standard_student_and_keeps_projectors_in_checkpoints(cma_run, tiny_world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    code, run = cma_run
    assert code == 0
    model = AutoModelForCausalLM.from_pretrained(run / "student")
    cross_tok = AutoTokenizer.from_pretrained(tiny_world.cross_student_dir)
    assert model.config.vocab_size == len(cross_tok) != len(AutoTokenizer.from_pretrained(tiny_world.teacher_dir))
    assert AutoTokenizer.from_pretrained(run / "student").get_vocab() == cross_tok.get_vocab()
    final = weights_of(run / "student" / "model.safetensors")
    assert final.keys() == weights_of(tiny_world.cross_student_dir / "model.safetensors").keys()  # no projector in it
    assert not same_tensors(run / "student" / "model.safetensors", tiny_world.cross_student_dir / "model.safetensors")
    assert not list((run / "student").glob("projectors*"))
    d_s, d_t = model.config.hidden_size, AutoModelForCausalLM.from_pretrained(tiny_world.teacher_dir).config.hidden_size
    saved = {}
    for step in ("step-0000004", "step-0000008"):
        saved[step] = weights_of(run / "checkpoints" / step / "projectors.safetensors")
        assert {k: tuple(v.shape) for k, v in saved[step].items()} == {
            "t2s.weight": (d_s, d_t), "t2s.bias": (d_s,), "s2t.weight": (d_t, d_s), "s2t.bias": (d_t,),
            "query.weight": (2 * d_t, 2 * d_s), "query.bias": (2 * d_t,)}
        state = json.loads((run / "checkpoints" / step / "state.json").read_text())
        assert "projectors.safetensors" in state["files"]  # hashed like every other file of the checkpoint
    assert not torch.equal(saved["step-0000004"]["t2s.weight"], saved["step-0000008"]["t2s.weight"]), "they train"
    training = torch.load(run / "checkpoints" / "step-0000008" / "training.pt", weights_only=True)
    assert len(training["optimizer"]["param_groups"]) == 3  # decay, no decay, projectors (their own lr)
    assert training["optimizer"]["param_groups"][2]["initial_lr"] == 1e-3


def test_across_tokenizers_ddk_ratios_are_bits_per_byte_ratios(cma_run, tiny_world):
    """The ratios at step 0 are bpb_S / bpb_T on the validation text, each model reading it with its
    own tokenizer; recomputed here with the demo build's independent bits-per-byte count."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distiller.measure import text_pieces
    from distiller.data import read_texts
    from harness.demo.checks import bits_per_byte

    _, run = cma_run
    history = json.loads((run / "ddk_history.rank0.json").read_text())
    models = {}
    for role, folder in (("student", tiny_world.cross_student_dir), ("teacher", tiny_world.teacher_dir)):
        models[role] = (AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder))
    for domain in ("code", "records"):
        pieces = text_pieces(read_texts(tiny_world.domain_file(domain, "validation.jsonl")), 4 * 64, 32)
        bpb = {role: bits_per_byte(model, tok, pieces, 64) for role, (model, tok) in models.items()}
        assert history[0][f"ratio/{domain}"] == pytest.approx(bpb["student"] / bpb["teacher"], rel=1e-5)


def test_dskd_cma_resumes_to_the_same_student(cma_run, tmp_path, tracking_uri):
    from harness.cli import main

    _, run = cma_run
    shutil.copytree(run / "checkpoints" / "step-0000004", tmp_path / "run" / "checkpoints" / "step-0000004")
    code = main(["distill", "--kd", "dskd-cma", *ARGS, "--out", str(tmp_path / "run"), "--resume",
                 "--tracking-uri", tracking_uri])
    assert code == 0
    assert same_tensors(tmp_path / "run" / "student" / "model.safetensors", run / "student" / "model.safetensors")
    assert same_tensors(tmp_path / "run" / "checkpoints" / "step-0000008" / "projectors.safetensors",
                        run / "checkpoints" / "step-0000008" / "projectors.safetensors")


def test_a_dskd_weight_outside_0_1_is_bad_input(tiny_world, tmp_path, capsys):
    from harness.cli import main

    assert main(["distill", "--kd", "uld", "--kd-weight", "1.5", *ARGS, "--out", str(tmp_path / "run")]) == 2
    assert "--kd-weight must be in [0, 1]" in capsys.readouterr().err


def test_the_trainer_refuses_them_too(tiny_world, tiny_store, tmp_path):
    from distiller.trainer import DistillConfig, distill

    config = DistillConfig(teacher=str(tiny_world.teacher_dir), student=str(tiny_world.cross_student_dir),
                           output_dir=str(tmp_path / "run"), kd="dskd", progress=False)
    with pytest.raises(ValueError, match="Modes that accept different tokenizers: dskd-cma, uld"):
        distill(config, tiny_store(tiny_world.cross_student_dir))


@pytest.mark.parametrize("kd, kd_weight, cross_student, projector_file", [
    ("dskd", None, False, True),  # dual-space KD on one vocabulary
    ("kd", 0.0, True, False),  # CPT across tokenizers: the student's CE alone, ratios in bits per byte
])
def test_the_other_modes_train_the_student(tiny_world, tiny_store, tmp_path, kd, kd_weight, cross_student,
                                           projector_file):
    from distiller.trainer import DistillConfig, distill

    start = tiny_world.cross_student_dir if cross_student else tiny_world.student_dir
    config = DistillConfig(teacher=str(tiny_world.teacher_dir), student=str(start), output_dir=str(tmp_path / "run"),
                           steps=4, interval=2, save_every=4, batch_size=4, block_size=64, kd=kd, kd_weight=kd_weight,
                           progress=False)
    result = distill(config, tiny_store(start))
    assert result.ratio_of == ("bits per byte" if cross_student else "perplexity")
    assert not same_tensors(result.student_dir / "model.safetensors", start / "model.safetensors")
    checkpoint = tmp_path / "run" / "checkpoints" / "step-0000004"
    assert (checkpoint / "projectors.safetensors").is_file() == projector_file
    if kd == "dskd":
        assert "query.weight" not in weights_of(checkpoint / "projectors.safetensors")
