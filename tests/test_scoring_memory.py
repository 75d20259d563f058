"""Scoring holds a chunk of logits, not [batch, length, vocabulary], and scores what lm-eval's own
HFLM scores: on the real requests of a multiple-choice and a perplexity slice of the default suite,
for random models of several families around the fixture tokenizers (docs/scoring-memory.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from families import build_model
from harness import home
from harness.lm import BoundedHFLM
from harness.registry import load_suite
from harness.taskfiles import inline_task, task_name

TOKENIZERS = Path(__file__).parent / "fixtures" / "tokenizers"
LIMIT = 3  # documents per slice: prose's first three are each two rolling windows; one context is truncated
CONTEXT = 128  # the models' length: the longer documents become several rolling windows
CHUNK = 64  # positions per chunk in these tests: a 128-token window goes through in two chunks


@pytest.fixture(scope="module")
def requests_of(tiny_world):
    """lm-eval's own requests (Instances) for the prose domain's two slices, by request type."""
    from lm_eval.tasks import TaskManager, get_task_dict

    suite = load_suite(home.repo_suites_dir() / "default.yaml", demo_data=lambda: tiny_world.data_dir)
    domain = next(d for d in suite.domains if d.name == "prose")
    tasks = get_task_dict([inline_task(s, task_name(domain.name, s.name)) for s in domain.slices],
                          TaskManager(include_defaults=False))
    found: dict[str, list] = {}
    for task in tasks.values():
        task.build_all_requests(limit=LIMIT, rank=0, world_size=1)
        for instance in task.instances:
            found.setdefault(instance.request_type, []).append(instance)
    assert set(found) == {"loglikelihood", "loglikelihood_rolling"}
    return found


@pytest.fixture(scope="module")
def model_of(tmp_path_factory):
    """``model_of(family, tokenizer)``: a small random model of that family, loaded (built once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    built = {}

    def load(family: str, tokenizer: str):
        if (family, tokenizer) not in built:
            folder = build_model(family, TOKENIZERS / tokenizer, tmp_path_factory.mktemp(f"{family}-{tokenizer}"),
                                 layers=2, hidden=32, context=CONTEXT, tie_embeddings=True)
            # The tokenizer from its fixture folder: the same tokenizer, and Qwen2's loads 3× faster from
            # vocab.json + merges.txt than from the tokenizer.json saved beside the model.
            built[family, tokenizer] = (AutoModelForCausalLM.from_pretrained(folder).eval(),
                                        AutoTokenizer.from_pretrained(TOKENIZERS / tokenizer))
        return built[family, tokenizer]

    return load


def _bounded(model, tokenizer, batch_size: int) -> BoundedHFLM:
    lm = BoundedHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                     chunk_logits=CHUNK * model.config.vocab_size)
    assert lm.bounded and lm.chunk == CHUNK
    return lm


def _scores(lm, requests) -> tuple[list[tuple[float, bool]], list[float]]:
    return (lm.loglikelihood(requests["loglikelihood"], disable_tqdm=True),
            lm.loglikelihood_rolling(requests["loglikelihood_rolling"], disable_tqdm=True))


def _accuracy(requests, answers) -> list[bool]:
    """Per document: the gold choice has the highest log-likelihood (lm-eval's acc)."""
    choices: dict[int, dict[int, float]] = {}
    gold: dict[int, int] = {}
    for instance, (logprob, _) in zip(requests, answers, strict=True):
        choices.setdefault(instance.doc_id, {})[instance.idx] = logprob
        gold[instance.doc_id] = instance.doc["label"]
    return [max(found, key=found.get) == gold[doc] for doc, found in choices.items()]


def _assert_equal(found, expected, requests):
    (mc, rolling), (mc_ref, rolling_ref) = found, expected
    assert [g for _, g in mc] == [g for _, g in mc_ref]
    assert _accuracy(requests["loglikelihood"], mc) == _accuracy(requests["loglikelihood"], mc_ref)
    assert [s for s, _ in mc] == pytest.approx([s for s, _ in mc_ref], rel=1e-4)
    assert rolling == pytest.approx(rolling_ref, rel=1e-4)


@pytest.mark.parametrize("family, tokenizer", [("gpt2", "gpt2"), ("qwen2", "qwen2"), ("llama", "gpt2")])
def test_bounded_batched_scoring_equals_lm_evals_own_one_at_a_time(requests_of, model_of, family, tokenizer):
    """In batches of 4 (right-padded, no attention mask), the bounded path gives the log-likelihoods
    (1e-4 relative), greedy flags and accuracy that HFLM unmodified gives one request at a time (no
    padding at all), while the output layer never sees more than a chunk of positions."""
    from lm_eval.models.huggingface import HFLM

    model, tok = model_of(family, tokenizer)
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda _m, args, _out: seen.append(args[0].shape[:-1].numel()))
    try:
        found = _scores(_bounded(model, tok, batch_size=4), requests_of)
        bounded_seen, seen[:] = list(seen), []
        expected = _scores(HFLM(pretrained=model, tokenizer=tok, batch_size=1), requests_of)
    finally:
        hook.remove()
    _assert_equal(found, expected, requests_of)
    # The probe of the model's own forward (8 positions) aside, no call saw more than a chunk, while
    # lm-eval's own path put whole windows (128 positions) through the output layer.
    assert max(bounded_seen[1:]) <= CHUNK < max(seen)


def test_greedy_flags_and_shared_contexts(model_of):
    """is_greedy is True exactly when every continuation token is the model's argmax; requests that
    share all but their last token go through lm-eval's one-forward cache, and score as lm-eval's."""
    from lm_eval.models.huggingface import HFLM

    model, tok = model_of("gpt2", "gpt2")
    requests = []
    with torch.no_grad():
        for text in ("def f(x):\n    return", "The quick brown fox", "1 + 1 ="):
            context = tok.encode(text)
            ids = list(context)
            for _ in range(3):  # the model's own greedy continuation
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
            greedy = ids[len(context):]
            other = greedy[:-1] + [(greedy[-1] + 1) % len(tok)]
            requests += [((text, "greedy"), context, greedy), ((text, "other"), context, other)]
    found = _bounded(model, tok, batch_size=4)._loglikelihood_tokens(requests, disable_tqdm=True)
    expected = HFLM(pretrained=model, tokenizer=tok, batch_size=4)._loglikelihood_tokens(requests, disable_tqdm=True)
    assert [g for _, g in found] == [g for _, g in expected] == [True, False] * 3
    assert [s for s, _ in found] == pytest.approx([s for s, _ in expected], rel=1e-4)


def test_soft_capped_logits_are_scored_as_the_model_gives_them(requests_of, model_of):
    """Gemma 2 soft-caps its logits after the output layer: the bounded path applies the same cap
    (else its probe of the model's forward would send it back to lm-eval's own path)."""
    from lm_eval.models.huggingface import HFLM

    model, tok = model_of("gemma2", "gpt2")
    # Its default cap (30) is linear at a random model's logit scale (~0.1); at 0.1 it bends them hard,
    # so a cap left out would show in every score. The forward reads the config when it runs.
    model.config.final_logit_softcapping = 0.1
    requests = requests_of["loglikelihood"]
    found = _bounded(model, tok, batch_size=4).loglikelihood(requests, disable_tqdm=True)
    expected = HFLM(pretrained=model, tokenizer=tok, batch_size=4).loglikelihood(requests, disable_tqdm=True)
    assert [g for _, g in found] == [g for _, g in expected]
    assert [s for s, _ in found] == pytest.approx([s for s, _ in expected], rel=1e-4)
