"""The stored teacher signal (docs/teacher-signal.md): the sparse loss equals the dense one at k = V, the
sampled target is unbiased, the format round-trips within its stated error, a killed computation
resumes to the same bytes, a truncated or mismatched signal is bad input (exit 2), and `kdh loop`
computes the signal once and trains every round from it, as its MLflow record shows."""

from __future__ import annotations

import shutil

import mlflow
import numpy as np
import pytest
import torch

from distiller import teacher_signal as ts
from distiller.errors import InputError
from distiller.losses import distillation_loss
from distiller.signal_store import TeacherSignal, decode_log_probs, encode_log_probs, pack_ids, unpack_ids
from distiller.sparse_losses import sampled_target, sparse_distillation_loss, target_from_log_probs
from harness import home
from harness.cli import main


def _problem(seed=0, B=2, T=5, H=8, V=11):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, dtype=torch.float64, generator=g, requires_grad=True)
    head = torch.randn(V, H, dtype=torch.float64, generator=g, requires_grad=True)
    teacher_hidden, teacher_head = torch.randn(B, T, 6, dtype=torch.float64, generator=g), torch.randn(V, 6, dtype=torch.float64, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, 1] = -100  # an ignored position
    return hidden, head, teacher_hidden, teacher_head, labels


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_sparse_loss_at_k_equal_to_the_vocabulary_is_the_dense_loss(temperature):
    hidden, head, t_hidden, t_head, labels = _problem()
    dense = distillation_loss(hidden, head, t_hidden, t_head, labels, kd_weight=0.3, temperature=temperature, chunk_size=3)
    dense_grads = torch.autograd.grad(dense[0], (hidden, head))
    log_p = torch.log_softmax(t_hidden @ t_head.T / temperature, -1)
    sparse = sparse_distillation_loss(hidden, head, target_from_log_probs(log_p, head.shape[0]), labels,
                                      kd_weight=0.3, temperature=temperature, chunk_size=3)
    sparse_grads = torch.autograd.grad(sparse[0], (hidden, head))
    for a, b in zip((*dense, *dense_grads), (*sparse, *sparse_grads)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # Below V: the tail bucket's loss, its gradient formed in the forward equal to autograd's of the formula.
    target = target_from_log_probs(log_p, 4)
    top4 = sparse_distillation_loss(hidden, head, target, labels, kd_weight=0.3, temperature=temperature, chunk_size=3)
    valid = labels != -100
    log_q = torch.log_softmax(hidden @ head.T / temperature, -1)[valid]
    in_tail = torch.ones_like(log_q, dtype=torch.bool).scatter_(-1, target.ids[valid], False)
    log_q_tail = torch.where(in_tail, log_q, -torch.inf).logsumexp(-1)
    p, t = target.weights[valid], target.tail[valid]
    kl = (p * (p.log() - log_q.gather(-1, target.ids[valid]))).sum(-1) + t * (t.log() - log_q_tail)
    ce = torch.nn.functional.cross_entropy((hidden @ head.T)[valid], labels[valid])
    reference = ce + 0.3 * kl.mean()
    torch.testing.assert_close(top4[0], reference)
    for a, b in zip(torch.autograd.grad(top4[0], (hidden, head)), torch.autograd.grad(reference, (hidden, head))):
        torch.testing.assert_close(a, b)
    assert not torch.isclose(top4[2], dense[2])


def test_the_sampled_targets_gradient_is_an_unbiased_estimate_of_the_dense_one():
    hidden, head, t_hidden, t_head, labels = _problem(seed=1)
    dense = distillation_loss(hidden, head, t_hidden, t_head, labels, kd_weight=0.5, chunk_size=4)
    dense_grad = torch.autograd.grad(dense[0], head)[0]
    log_p = torch.log_softmax(t_hidden @ t_head.T, -1)
    g = torch.Generator().manual_seed(0)
    grads, kds = [], []
    for _ in range(120):
        loss = sparse_distillation_loss(hidden, head, sampled_target(log_p, 3, g), labels, kd_weight=0.5, chunk_size=4)
        grads.append(torch.autograd.grad(loss[0], head)[0])
        kds.append(loss[2].detach())
    grads = torch.stack(grads)
    stderr = grads.std(0) / len(grads) ** 0.5
    assert ((grads.mean(0) - dense_grad).abs() <= 5 * stderr + 1e-9).all()
    kds = torch.stack(kds)
    assert abs(kds.mean() - dense[2]) <= 5 * kds.std() / len(kds) ** 0.5
    # and top-3 is biased: its gradient's error is many standard errors away
    top3 = sparse_distillation_loss(hidden, head, target_from_log_probs(log_p, 3), labels, kd_weight=0.5, chunk_size=4)
    assert ((torch.autograd.grad(top3[0], head)[0] - dense_grad).abs() > 5 * stderr).any()


@pytest.mark.parametrize("vocab, width", [(384, 2), (50_257, 2), (151_646, 3)])
def test_the_format_round_trips_ids_exactly_and_log_probs_within_the_stated_error(vocab, width):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, size=(50, 64))
    assert (unpack_ids(pack_ids(ids, width), width) == ids).all()
    # log-probs of peaked and of flat distributions, sorted as the top-k are
    logits = torch.from_numpy(rng.normal(size=(400, 2000)) * rng.uniform(0.5, 6, size=(400, 1)))
    lp = torch.log_softmax(logits, -1).topk(64, dim=-1).values.numpy()
    decoded = decode_log_probs(encode_log_probs(lp), 64)
    error = np.abs(decoded - lp)
    # docs/teacher-signal.md: under 0.08 nats weighted by probability (8% of a probability), 95% of the
    # entries within 0.1 nats, the first within 0.2 (steps of 0.4 nats)
    assert (np.exp(lp) * error).sum() / np.exp(lp).sum() < 0.08
    assert np.quantile(error, 0.95) < 0.1
    assert error[lp[:, 0] > -6, 0].max() <= 0.2 + 1e-9


SETTINGS = dict(k=8, part_blocks=48)  # the tiny prose domain's blocks: three parts


@pytest.fixture(scope="module")
def killed_and_resumed(tiny_world, tiny_store, tmp_path_factory):
    """A signal whose computation was killed after its first part, then run again."""
    store = tiny_store(tiny_world.tokenizer_dir)
    out = tmp_path_factory.mktemp("signal") / "sig"
    write, written = ts._write_part, []

    def killed_after_one(*args):
        if written:
            raise KeyboardInterrupt("killed")
        write(*args)
        written.append(ts.part_files(*args[:3])[0])

    compute = dict(settings=ts.SignalSettings(**SETTINGS), student_dir=tiny_world.student_dir, domains=["prose"])
    ts._write_part = killed_after_one
    try:
        with pytest.raises(KeyboardInterrupt):
            ts.compute_signal(tiny_world.teacher_dir, store, out, **compute)
    finally:
        ts._write_part = write
    with pytest.raises(InputError, match="no manifest.json"):
        TeacherSignal(out)  # a killed computation is no signal
    first = (written[0], written[0].stat().st_mtime_ns, written[0].read_bytes())
    return ts.compute_signal(tiny_world.teacher_dir, store, out, **compute), store, first


def test_a_killed_computation_resumes_with_the_rest_and_a_truncated_signal_is_refused(killed_and_resumed, tiny_world,
                                                                                    tmp_path):
    from transformers import AutoModelForCausalLM

    from distiller.store import Blocks, TokenStore

    made, store, (first_part, mtime, content) = killed_and_resumed
    signal = TeacherSignal(made.root)
    sizes = signal.manifest["domains"]["prose"]["part_sizes"]
    assert len(sizes) >= 3 and made.positions == (sum(sizes) - sizes[0]) * signal.block  # only what the kill left
    part = made.root / "prose" / first_part.name
    assert part.stat().st_mtime_ns == mtime and part.read_bytes() == content  # kept, not recomputed
    # what the reader gives for a block of each part is the teacher's top-k, within the stated error
    teacher = AutoModelForCausalLM.from_pretrained(tiny_world.teacher_dir).eval()
    blocks = Blocks(TokenStore(store).stream("prose", "train"), signal.block + 1)
    for index in (5, sizes[0] + 3, sum(sizes) - 1):
        ids, lp = ts.block_entries(teacher, blocks[index][None], ts.SignalSettings(**SETTINGS), None)
        got_ids, got_lp = signal.read("prose", index)
        assert (got_ids == ids[0]).mean() > 0.99  # ties in the last place may order differently
        assert np.abs(got_lp - lp[0]).mean() < 0.08

    copy = tmp_path / "sig"
    shutil.copytree(made.root, copy)
    lp_file = copy / "prose" / "00001.lp"
    lp_file.write_bytes(lp_file.read_bytes()[:-7])
    with pytest.raises(InputError, match="truncated"):
        TeacherSignal(copy)


def test_a_signal_of_another_setting_or_a_bad_k_is_refused_with_exit_2(killed_and_resumed, tiny_world, tmp_path,
                                                                      capsys):
    made, store, _ = killed_and_resumed
    common = ["--teacher", str(tiny_world.teacher_dir), "--student", str(tiny_world.student_dir), "--store", str(store),
              "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    code = main(["distill", *common, "--teacher-signal", str(made.root), "--temperature", "2", "--steps", "1",
                 "--out", str(tmp_path / "d")])
    assert code == 2
    assert "temperature: the signal has 1.0, this run 2.0" in capsys.readouterr().err
    assert main(["distill", *common, "--teacher-signal", str(made.root), "--kd", "dskd", "--steps", "1",
                 "--out", str(tmp_path / "d")]) == 2
    assert "need the live teacher" in capsys.readouterr().err
    assert main(["teacher-signal", *common, "-k", "0", "--out", str(tmp_path / "s")]) == 2
    assert "-k 0" in capsys.readouterr().err
    other = tmp_path / "other"
    shutil.copytree(made.root, other)
    (other / "manifest.json").write_text((other / "manifest.json").read_text().replace(TeacherSignal(made.root).identity["store"], "0" * 64))
    assert main(["distill", *common, "--teacher-signal", str(other), "--steps", "1", "--out", str(tmp_path / "d")]) == 2
    assert "store: the signal has '0000" in capsys.readouterr().err


def test_the_loop_runs_the_teacher_once_and_every_distill_run_names_the_signal(killed_and_resumed, tiny_world,
                                                                               write_suite, tmp_path):
    _, store, _ = killed_and_resumed
    suite = write_suite(f"""
        name: sig
        thresholds: {{min_retention: 0.1, max_drop: 0.5, alpha: 0.05}}
        domains:
          - name: prose
            validation: {tiny_world.domain_file('prose', 'validation.jsonl')}
            train: {tiny_world.domain_file('prose', 'train.jsonl')}
            slices:
              - {{name: ppl, task: tasks/perplexity.yaml, data: {tiny_world.domain_file('prose', 'test_ppl.jsonl')}, metric: bits_per_byte}}
        """)
    shutil.rmtree(home.kdh_home() / "signals", ignore_errors=True)  # a kept test home may hold it from a last run
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    code = main(["loop", "--suite", str(suite), "--rounds", "2", "--steps", "3", "--interval", "2", "--limit", "2",
                 "--no-promote", "--store", str(store), "--teacher-signal", "--signal-k", "8", "--tracking-uri", uri,
                 "--out", str(tmp_path / "out")])
    assert code == 0
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["kdh/sig"])
    made = runs[runs["tags.kdh.kind"] == "teacher-signal"]
    assert len(made) == 1 and made["tags.kdh.teacher_ran"].iloc[0] == "true"  # the teacher over the corpus once
    distilled = runs[runs["tags.kdh.kind"] == "distill"]
    assert len(distilled) >= 1
    assert (distilled["tags.kdh.teacher_signal"] == made["tags.kdh.teacher_signal"].iloc[0]).all()
    # A later loop, round or student of this vocabulary finds it: the teacher does not run again.
    from harness import steps
    from harness.inputs import open_suite

    again = steps.teacher_signal(open_suite(str(suite)), str(tiny_world.teacher_dir), str(tiny_world.student_dir),
                                 store, ts.SignalSettings(k=8))
    assert not again.computed and again.fingerprint == made["tags.kdh.teacher_signal"].iloc[0]


@pytest.mark.parametrize("items, world", [(7, 1), (7, 3), (2, 4), (64, 8)])
def test_the_ranks_shares_cover_every_part_once_and_differ_by_at_most_one(items, world):
    shares = [ts.rank_share(items, rank, world) for rank in range(world)]
    assert sorted(i for share in shares for i in share) == list(range(items))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
