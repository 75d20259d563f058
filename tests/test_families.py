"""Every --kd mode on the real model families and tokenizers (docs/families.md): random-initialised
tiny models of each family (tests/families.py) around the GPT-2 and Qwen2 tokenizer fixtures, on
one vocabulary and across the two, through distill(), `kdh distill` and `kdh loop`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from distiller.dskd import Side
from distiller.uld import uld_distance, uld_loss
from families import FAMILIES, build_model

TOKENIZERS = Path(__file__).parent / "fixtures" / "tokenizers"


def randn(*shape, seed, grad=False, scale=1.0):
    x = scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.requires_grad_(grad)


@pytest.mark.parametrize("student_vocab, teacher_vocab", [(9, 23), (23, 9)])
def test_the_fused_uld_equals_the_sorted_l1_formula_in_value_and_gradient(student_vocab, teacher_vocab):
    """The fused path sorts only the larger side's top entries; the reference sorts everything."""
    s_hidden, s_head = randn(2, 6, 5, seed=1, grad=True), randn(student_vocab, 5, seed=2, grad=True, scale=2.0)
    t_hidden, t_head = randn(2, 6, 4, seed=3), randn(teacher_vocab, 4, seed=4, scale=2.0)
    s_labels = torch.randint(0, student_vocab, (2, 6), generator=torch.Generator().manual_seed(5))
    t_labels = torch.randint(0, teacher_vocab, (2, 6), generator=torch.Generator().manual_seed(6))
    s_labels[1, -1], t_labels[0, 2] = -100, -100
    student = Side(s_hidden, s_head, torch.zeros_like(s_labels), s_labels)
    ce, distance = uld_loss(student, Side(t_hidden, t_head, torch.zeros_like(t_labels), t_labels),
                            temperature=2.0, chunk_size=4)
    (0.3 * ce + 0.7 * distance).backward()
    fused = [s_hidden.grad.clone(), s_head.grad.clone()]
    s_hidden.grad = s_head.grad = None

    aligned = (s_labels != -100) & (t_labels != -100)
    reference = uld_distance((s_hidden @ s_head.T)[aligned], (t_hidden @ t_head.T)[aligned], 2.0).mean()
    logits = (s_hidden @ s_head.T)[s_labels != -100]
    reference_ce = torch.nn.functional.cross_entropy(logits, s_labels[s_labels != -100])
    (0.3 * reference_ce + 0.7 * reference).backward()
    assert distance.item() == pytest.approx(reference.item(), rel=1e-12)
    assert ce.item() == pytest.approx(reference_ce.item(), rel=1e-12)
    for got, want in zip(fused, (s_hidden.grad, s_head.grad)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_documents_are_separated_by_end_of_text_alone_even_for_a_tokenizer_that_adds_a_bos():
    """The policy of docs/families.md: no BOS inside a row, whatever the tokenizer adds to a lone text."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from distiller.pairs import teacher_ids

    student, teacher = (AutoTokenizer.from_pretrained(TOKENIZERS / name) for name in ("gpt2", "qwen2"))
    with_bos = AutoTokenizer.from_pretrained(TOKENIZERS / "qwen2")
    bos = with_bos.convert_tokens_to_ids("<|im_start|>")  # stands in for a sentencepiece <s>
    with_bos.backend_tokenizer.post_processor = TemplateProcessing(single="<|im_start|> $A",
                                                                   special_tokens=[("<|im_start|>", bos)])
    assert with_bos("hi").input_ids[0] == bos  # it does add one to a lone text
    eos = student.eos_token_id
    block = [*student.encode("def f(x):"), eos, *student.encode("Le café coûte 3 €.")]
    ids = teacher_ids(block, student, with_bos)
    assert ids == teacher_ids(block, student, teacher) and bos not in ids
    assert ids.count(teacher.eos_token_id) == 1 and teacher.decode(ids) == student.decode(block)
    assert student.bos_token_id == student.eos_token_id and teacher.bos_token_id is None  # GPT-2; Qwen2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """model(family, tokenizer, seed) → a tiny random model folder, built once."""
    root, built = tmp_path_factory.mktemp("families"), {}

    def model(family: str, tokenizer: str, seed: int = 0) -> Path:
        key = (family, tokenizer, seed)
        if key not in built:
            built[key] = build_model(family, TOKENIZERS / tokenizer, root / f"{family}-{tokenizer}-{seed}",
                                     layers=2, hidden=32, seed=seed, context=128)
        return built[key]

    return model


# (--kd, teacher family and tokenizer, student family and tokenizer): each mode once, one vocabulary
# under kd and dskd, Qwen2 → GPT-2 under uld and GPT-2 → Qwen2 under dskd-cma, and every family in
# a run (four students, two more as teachers: a teacher's forward is the same code as a student's).
RUNS = [
    ("kd", ("llama", "qwen2"), ("qwen2", "qwen2")),
    ("dskd", ("gpt2", "gpt2"), ("gemma", "gpt2")),
    ("uld", ("qwen2", "qwen2"), ("phi3", "gpt2")),
    ("dskd-cma", ("gpt2", "gpt2"), ("mistral", "qwen2")),
]
assert {family for _, teacher, student in RUNS for family in (teacher[0], student[0])} == set(FAMILIES)


@pytest.mark.parametrize("kd, teacher, student", RUNS, ids=[f"{k}-{t[0]}:{t[1]}-to-{s[0]}:{s[1]}" for k, t, s in RUNS])
def test_every_mode_trains_each_family_into_a_student_that_reloads(models, tiny_store, tmp_path, kd, teacher, student):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distiller.trainer import DistillConfig, distill

    start = models(*student)
    config = DistillConfig(teacher=str(models(*teacher, seed=1)), student=str(start), output_dir=str(tmp_path),
                           steps=2, batch_size=2, block_size=32, kd=kd, val_blocks=1, interval=10, save_every=10,
                           progress=False)
    result = distill(config, tiny_store(TOKENIZERS / student[1]), domains=["code", "prose"])
    assert result.ratio_of == ("perplexity" if teacher[1] == student[1] else "bits per byte")
    assert all(math.isfinite(r) and r > 0 for r in result.ratios.values()), result.ratios
    reloaded = AutoModelForCausalLM.from_pretrained(result.student_dir)
    assert type(reloaded).__name__.lower().startswith(student[0])
    assert AutoTokenizer.from_pretrained(result.student_dir).get_vocab() == AutoTokenizer.from_pretrained(start).get_vocab()
    before = AutoModelForCausalLM.from_pretrained(start).state_dict()
    changed = [k for k, v in reloaded.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "two steps changed no weight"
    batch = torch.tensor([AutoTokenizer.from_pretrained(start).encode("def f(x): return x")])
    assert math.isfinite(reloaded(input_ids=batch, labels=batch).loss.item())


@pytest.mark.parametrize("kd", ["kd", "dskd"])
def test_a_one_vocabulary_mode_across_the_real_tokenizers_is_bad_input_naming_the_modes_that_fit(
        models, tmp_path, capsys, kd):
    from harness.cli import main

    code = main(["distill", "--kd", kd, "--teacher", str(models("qwen2", "qwen2")), "--student",
                 str(models("gpt2", "gpt2")), "--out", str(tmp_path / "run")])
    assert code == 2
    message = capsys.readouterr().err
    assert "151646 and 50257" in message and "dskd-cma, uld" in message and "--kd-weight 0" in message
    assert not (tmp_path / "run").exists()


@pytest.fixture
def two_domain_suite(lenient_suite):
    """The lenient default suite on code and prose alone: the loop's steps are the same with two
    domains as with four, at half the scoring."""
    import yaml

    suite = yaml.safe_load(lenient_suite.read_text())
    suite["domains"] = [d for d in suite["domains"] if d["name"] in ("code", "prose")]
    path = lenient_suite.with_name("two-domains.yaml")  # beside the suite's tasks/
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def test_a_cross_vocabulary_loop_promotes_a_uld_student(models, tiny_world, two_domain_suite, tmp_path):
    """`kdh loop --kd uld`: a Qwen2-tokenizer teacher, a GPT-2-tokenizer student, scored, distilled,
    gated and promoted (a registry version under the champion alias)."""
    from mlflow import MlflowClient, set_tracking_uri

    from harness.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(["loop", "--suite", str(two_domain_suite), "--kd", "uld", "--teacher", str(models("qwen2", "qwen2", seed=1)),
                 "--student", str(models("llama", "gpt2")), "--steps", "2", "--interval", "10",
                 "--train-batch-size", "2", "--block-size", "32", "--limit", "4", "--tracking-uri", uri, "--out", str(tmp_path / "out")])
    assert code == 0
    set_tracking_uri(uri)
    version = MlflowClient().get_model_version_by_alias("kdh-default", "champion")
    assert int(version.version) == 1
