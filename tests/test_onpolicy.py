"""On-policy distillation (distiller/onpolicy.py, GKD): the student's own continuations, the generalised
JSD on exactly the generated tokens, a share λ of the steps decided by (seed, step), and a run that
resumes to the very same student. Real tiny transformers models of the tiny demo world."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from distiller.config import DistillConfig
from distiller.errors import InputError
from distiller.losses import divergence_from_log_probs
from distiller.onpolicy import IGNORE, OnPolicyStep, Policy, continue_prompts, generated_labels
from distiller.trainer import distill

EOS = 0


def test_the_labels_are_the_continuation_up_to_its_end_of_text():
    rows = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, EOS, 3, 4], [5, 6, EOS, 8, 9, 10]])
    labels = generated_labels(rows, prompt_tokens=3, eos_id=EOS)
    assert labels.tolist() == [[IGNORE, IGNORE, 8, 9, 10],  # the prompt's own next tokens are not trained
                               [IGNORE, IGNORE, EOS, IGNORE, IGNORE],  # the end is learnt, what follows is not
                               [IGNORE, IGNORE, 8, 9, 10]]  # an end-of-text inside the prompt ends nothing
    assert generated_labels(rows, 3, None)[1].tolist() == [IGNORE, IGNORE, EOS, 3, 4]


def test_the_share_of_on_policy_steps_is_lambda_and_the_same_on_every_call():
    policy = Policy(lmbda=0.3, seed=7)
    picks = [policy.on_policy(s) for s in range(2000)]
    assert 0.27 < sum(picks) / len(picks) < 0.33
    assert picks == [Policy(lmbda=0.3, seed=7).on_policy(s) for s in range(2000)]  # a resumed run decides alike
    assert picks != [Policy(lmbda=0.3, seed=8).on_policy(s) for s in range(2000)]
    assert not any(Policy(lmbda=0.0).on_policy(s) for s in range(100))
    assert all(Policy(lmbda=1.0).on_policy(s) for s in range(100))


@pytest.fixture(scope="module")
def pair(tiny_world):
    student = AutoModelForCausalLM.from_pretrained(tiny_world.student_dir)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_world.teacher_dir).eval()
    eos = AutoTokenizer.from_pretrained(tiny_world.student_dir).eos_token_id
    return student, teacher, eos


def test_the_student_continues_each_prompt_reproducibly_and_leaves_the_run_s_random_state(pair):
    student, _, eos = pair
    prompts = torch.randint(1, 300, (4, 8), generator=torch.Generator().manual_seed(0))
    policy = Policy(prompt_tokens=8, new_tokens=12)
    student.train()
    state = torch.get_rng_state()
    first = continue_prompts(student, prompts, policy, eos, seed=3)
    assert torch.equal(torch.get_rng_state(), state) and student.training
    assert first.shape == (4, 20) and torch.equal(first[:, :8], prompts)
    assert torch.equal(first, continue_prompts(student, prompts, policy, eos, seed=3))
    assert not torch.equal(first, continue_prompts(student, prompts, policy, eos, seed=4))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_the_loss_is_the_generalised_jsd_on_the_generated_tokens_only(pair, beta):
    student, teacher, eos = pair
    rows = torch.randint(1, 300, (3, 30), generator=torch.Generator().manual_seed(1))
    policy = Policy(lmbda=1.0, beta=beta, prompt_tokens=6, new_tokens=10)
    step = OnPolicyStep(policy, student, student, teacher, eos, {"temperature": 1.0, "chunk_size": 7})
    student.zero_grad()
    loss, _, kd = step(rows, seed=5)
    loss.backward()
    assert student.get_input_embeddings().weight.grad.abs().sum() > 0

    sequences = continue_prompts(student, rows[:, :6], policy, eos, seed=5)  # the same continuations
    labels = generated_labels(sequences, 6, eos)
    with torch.no_grad():
        log_q = torch.log_softmax(student(sequences[:, :-1]).logits.double(), -1)
        log_p = torch.log_softmax(teacher(sequences[:, :-1]).logits.double(), -1)
    valid = labels != IGNORE
    expected = divergence_from_log_probs(log_q[valid], log_p[valid], "jsd", beta, 0.1).mean()
    assert kd.item() == pytest.approx(expected.item(), rel=1e-4)
    assert valid[:, :5].sum() == 0 and valid.sum() > 0


def test_on_policy_needs_one_vocabulary_and_a_live_teacher(tiny_world, tmp_path):
    base = {"teacher": str(tiny_world.teacher_dir), "student": str(tiny_world.student_dir), "output_dir": str(tmp_path)}
    for bad, says in [({"kd": "uld"}, "not with --kd"), ({"teacher_signal": "x"}, "--teacher-signal"),
                      ({"lmbda": 1.5}, "--lmbda and --beta must be in [0, 1]"),
                      ({"prompt_tokens": 300, "block_size": 256}, "longer than a row")]:
        with pytest.raises(InputError, match=re.escape(says)):
            DistillConfig(**base, lmbda=bad.pop("lmbda", 0.5), **bad)


def test_an_on_policy_run_resumed_from_its_checkpoint_ends_with_the_same_student(tiny_world, tiny_store, tmp_path):
    store = tiny_store(tiny_world.student_dir)

    def run(out, **extra):
        config = DistillConfig(teacher=str(tiny_world.teacher_dir), student=str(tiny_world.student_dir),
                               output_dir=str(out), steps=8, batch_size=4, block_size=64, interval=4, save_every=4,
                               val_blocks=4, lmbda=0.5, prompt_tokens=16, new_tokens=16, progress=False, seed=3,
                               **extra)
        return distill(config, store)

    whole = run(tmp_path / "whole")
    picks = [Policy(lmbda=0.5, seed=3).on_policy(s) for s in range(8)]
    assert any(picks) and not all(picks)  # both kinds of step in these 8
    resumed_out = tmp_path / "resumed"
    (resumed_out / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "step-0000004", resumed_out / "checkpoints" / "step-0000004")
    resumed = run(resumed_out, resume=True)
    a = load_file(next(whole.student_dir.glob("*.safetensors")))
    b = load_file(next(resumed.student_dir.glob("*.safetensors")))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------
# Sequence-level KD: the teacher's continuations, made once


def test_the_teacher_s_continuations_are_made_once_and_refused_for_another_teacher(tiny_world, tiny_store, tmp_path):
    from distiller.seqkd import GenerationSettings, compute_generations, open_generations
    from distiller.store import TokenStore

    store = tiny_store(tiny_world.student_dir)
    settings = GenerationSettings(prompts=6, prompt_tokens=8, new_tokens=8, batch_size=4)
    made = compute_generations(tiny_world.teacher_dir, store, tmp_path, settings, ["code", "records"])
    assert made.computed and set(made.rows) == {"code", "records"}
    assert all(r.shape == (6, 16) for r in made.rows.values())
    again = compute_generations(tiny_world.teacher_dir, store, tmp_path, settings, ["code", "records"])
    assert not again.computed and again.root == made.root
    assert all(torch.equal(again.rows[d], made.rows[d]) for d in made.rows)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_world.teacher_dir).eval()
    with torch.no_grad():  # greedy: each continuation is the teacher's argmax, token by token
        first = made.rows["code"][:1]
        logits = teacher(first[:, :-1]).logits[0, 7:]
    kept = first[0, 8:] != EOS_OF(tiny_world)
    assert torch.equal(logits.argmax(-1)[kept.cumprod(0).bool()], first[0, 8:][kept.cumprod(0).bool()])
    with pytest.raises(InputError, match="made for another teacher"):
        open_generations(made.root, teacher_dir=tiny_world.student_dir, store=TokenStore(store), domains=["code"])
    with pytest.raises(InputError, match="no generations for domain"):
        open_generations(made.root, teacher_dir=tiny_world.teacher_dir, store=TokenStore(store), domains=["prose"])


def EOS_OF(world) -> int:
    return AutoTokenizer.from_pretrained(world.student_dir).eos_token_id


def test_the_loop_distils_on_policy_and_its_gate_judges_the_generation_slices_with_the_paired_test(tiny_world, tmp_path):
    import pandas as pd

    from harness import home
    from harness.cli import main

    import mlflow

    out, uri = tmp_path / "loop", f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["loop", "--suite", str(home.repo_suites_dir() / "generation.yaml"), "--teacher",
                 str(tiny_world.teacher_dir), "--student", str(tiny_world.student_dir), "--steps", "4", "--interval",
                 "2", "--lmbda", "0.5", "--seq-kd", "--seq-prompts", "8", "--prompt-tokens", "16", "--new-tokens", "8",
                 "--limit", "6", "--no-promote", "--tracking-uri", uri, "--out", str(out)])
    assert code in (0, 1)  # a verdict either way; the tiny student may not reach the floor
    # GKD over both: λ of the steps on the student's continuations, the rest on the teacher's, made once.
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("kdh/generation").experiment_id
    made = client.search_runs([experiment], "tags.`kdh.kind` = 'teacher-generations'")
    distilled = client.search_runs([experiment], "tags.`kdh.kind` = 'distill'")
    assert len(made) == 1 and made[0].info.status == "FINISHED" and len(distilled) == 1
    assert distilled[0].data.params["seq_kd"] == made[0].data.tags["kdh.generations_dir"]
    assert distilled[0].data.params["lmbda"] == "0.5"
    on_policy = [m.value for m in client.get_metric_history(distilled[0].info.run_id, "on_policy")]
    assert set(on_policy) <= {0.0, 1.0}
    verdict = pd.read_csv(out / "round-1" / "gate" / "verdict.csv")
    generation = verdict[verdict["slice"].isin(["rest-of-line", "end-of-sentence", "answer", "fields"])]
    regression = generation[generation["check"] == "regression"]
    assert len(regression) == 4 and regression["p_value"].notna().all()  # candidate vs champion, item by item
    assert set(generation.loc[generation["check"] == "retention", "status"]) <= {"pass", "fail"}
