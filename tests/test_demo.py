"""The demo world: corpus and splits (pure, fast), then one tiny world built for real."""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from pathlib import Path

import pytest

from harness.home import configure_environment

configure_environment()  # offline before transformers is imported

from harness.demo import DOMAINS, SplitOverlapError, World, ensure_world  # noqa: E402
from harness.demo import build, corpus  # noqa: E402
from harness.demo.items import build_mc_items  # noqa: E402

TINY = build.RECIPES["tiny"]


@pytest.fixture(scope="session")
def tiny_home(kdh_env) -> Path:
    return kdh_env  # the session's kdh home: the world the other tests use, built once (tests/conftest.py)


@pytest.fixture(scope="session")
def tiny_world(tiny_home) -> World:
    return ensure_world(tiny_home, "tiny", progress=False)


@pytest.fixture(scope="session")
def tiny_corpus():
    return corpus.build_corpus(TINY["corpus"])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- corpus and splits ----------------------------------------------------------------------


def test_split_check_raises_on_overlap_naming_domain_splits_and_example():
    overlapping = {
        "code": {"train": ["x = 1"], "validation": ["y = 2"], "test": ["z = 3"]},
        "prose": {"train": ["The cat  sat on the mat.", "Other."], "validation": [], "test": ["The cat\nsat on the mat."]},
    }
    with pytest.raises(SplitOverlapError) as raised:
        corpus.check_splits_disjoint(overlapping)
    message = str(raised.value)
    assert "'prose'" in message and "'train'" in message and "'test'" in message
    assert "The cat sat on the mat." in message


def test_split_check_passes_on_disjoint_input(tiny_corpus):
    corpus.check_splits_disjoint({"prose": {"train": ["a b"], "validation": ["a c"], "test": ["b a"]}})
    corpus.check_splits_disjoint(tiny_corpus)


def test_duplicates_within_a_split_are_removed_before_assignment():
    splits = corpus.assign_splits("prose", ["same  text", "same\ntext", "other"], 0, {"validation": 0.3, "test": 0.3})
    assert sum(len(docs) for docs in splits.values()) == 2


def test_corpus_is_deterministic_for_a_seed(tiny_corpus):
    again = corpus.build_corpus(TINY["corpus"])
    assert corpus.corpus_fingerprint(again) == corpus.corpus_fingerprint(tiny_corpus)
    assert all(tiny_corpus[d]["test"] for d in DOMAINS), "every domain has test documents"
    reseeded = corpus.build_corpus({**TINY["corpus"], "seed": TINY["corpus"]["seed"] + 1})
    assert corpus.corpus_fingerprint(reseeded) != corpus.corpus_fingerprint(tiny_corpus)
    for domain in ("arithmetic", "records"):
        assert reseeded[domain]["test"] != tiny_corpus[domain]["test"]


def test_split_assignment_depends_on_the_seed():
    docs = corpus.arithmetic_documents(200, seed=7)
    fractions = TINY["corpus"]["split_fractions"]
    first = corpus.assign_splits("arithmetic", docs, 1, fractions)
    second = corpus.assign_splits("arithmetic", docs, 2, fractions)
    assert first == corpus.assign_splits("arithmetic", docs, 1, fractions)
    assert set(first["test"]) != set(second["test"])


def test_mc_items_come_from_the_test_split_only(tiny_corpus):
    seed = TINY["corpus"]["seed"]
    for domain in DOMAINS:
        test_docs = tiny_corpus[domain]["test"]
        items = build_mc_items(domain, test_docs, 15, seed)
        assert items, domain
        for item in items:
            # the context plus the true choice is literally the start of a held-out document
            true_text = item["context"] + item["choices"][item["label"]]
            assert any(doc.startswith(true_text) for doc in test_docs), (domain, true_text[-80:])


def test_an_overlap_stops_the_build_before_anything_is_written(tmp_path, monkeypatch):
    honest = corpus.assign_splits

    def leaky(domain, docs, seed, fractions):
        splits = honest(domain, docs, seed, fractions)
        splits["test"].append(splits["train"][0])  # a training document leaks into test
        return splits

    monkeypatch.setattr(corpus, "assign_splits", leaky)
    with pytest.raises(SplitOverlapError, match="'code'.*'train'.*'test'"):
        ensure_world(tmp_path, "tiny", progress=False)
    assert not (tmp_path / "demo" / "tiny").exists()


def test_unknown_size_is_a_value_error_naming_the_sizes(tmp_path):
    with pytest.raises(ValueError, match="default.*tiny"):
        ensure_world(tmp_path, "huge")


# --- the tiny world, built once ---------------------------------------------------------------


def test_tiny_world_layout_and_manifest(tiny_world, tiny_home):
    assert tiny_world.root == tiny_home / "demo" / "tiny"
    assert tiny_world.data_dir == tiny_world.root / "data"
    assert tiny_world.domain_file("code", "test_mc.jsonl") == tiny_world.root / "data" / "code" / "test_mc.jsonl"
    manifest = json.loads((tiny_world.root / "world.json").read_text())
    assert manifest == tiny_world.manifest
    assert manifest["recipe_hash"] == build.recipe_hash(TINY)
    for name in ("teacher", "student"):
        assert manifest["training"][name]["steps"] == TINY[name]["steps"]
        for domain in DOMAINS:
            assert math.isfinite(manifest["evaluation"]["test_bpb"][name][domain])
    assert not list((tiny_home / "demo").glob(".tiny.tmp-*")), "no half-built folder left behind"


def test_data_files_are_well_formed_and_disjoint(tiny_world):
    on_disk = {}
    for domain in DOMAINS:
        on_disk[domain] = {
            split: [row["text"] for row in read_jsonl(tiny_world.domain_file(domain, f"{split}.jsonl"))]
            for split in ("train", "validation")
        }
        on_disk[domain]["test"] = [row["text"] for row in read_jsonl(tiny_world.domain_file(domain, "test_ppl.jsonl"))]
        assert on_disk[domain]["train"] and on_disk[domain]["test"]
        rows = read_jsonl(tiny_world.domain_file(domain, "test_mc.jsonl"))
        assert len(rows) == tiny_world.manifest["domains"][domain]["test_mc"]["items"] > 0
        for row in rows:
            assert set(row) == {"context", "choices", "label"}
            assert isinstance(row["context"], str) and row["context"]
            assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4
            assert all(isinstance(choice, str) and choice for choice in row["choices"])
            assert isinstance(row["label"], int) and 0 <= row["label"] < 4
    corpus.check_splits_disjoint(on_disk)


def test_models_and_tokenizer_load_offline_from_safetensors(tiny_world):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    tokenizer = AutoTokenizer.from_pretrained(tiny_world.tokenizer_dir, local_files_only=True)
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.pad_token == "<|endoftext|>"
    text = "def f(x):\n    return x + 12  # café"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text

    params = {}
    for folder in (tiny_world.teacher_dir, tiny_world.student_dir):
        assert (folder / "model.safetensors").is_file()
        assert not list(folder.glob("*.bin")), "weights are safetensors only"
        assert (folder / "tokenizer.json").is_file(), "each model folder carries its tokenizer"
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
        assert model.config.max_position_embeddings == TINY["block_size"]
        assert model.config.eos_token_id == model.generation_config.eos_token_id == tokenizer.eos_token_id
        assert model.config.pad_token_id == tokenizer.pad_token_id
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))
        params[folder.name] = tiny_world.manifest["training"][folder.name]["non_embedding_params"]
    assert params["teacher"] >= 4 * params["student"]


def test_the_cross_student_has_its_own_tokenizer_and_every_item_fits_both(tiny_world):
    """The second student reads text with its own tokenizer (another vocabulary size, other merges),
    and every multiple-choice answer fits the context in either tokenization: lm-eval refuses a
    choice longer than the model's context."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    main = AutoTokenizer.from_pretrained(tiny_world.tokenizer_dir)
    cross = AutoTokenizer.from_pretrained(tiny_world.cross_tokenizer_dir)
    assert len(cross) == TINY["cross_student"]["tokenizer"]["vocab_size"] != len(main)
    merges = [json.loads((folder / "tokenizer.json").read_text())["model"]["merges"]
              for folder in (tiny_world.tokenizer_dir, tiny_world.cross_tokenizer_dir)]
    assert merges[1] != merges[0][: len(merges[1])], "learnt from other documents, not a prefix of the same merges"
    assert AutoTokenizer.from_pretrained(tiny_world.cross_student_dir).get_vocab() == cross.get_vocab()
    model = AutoModelForCausalLM.from_pretrained(tiny_world.cross_student_dir, local_files_only=True)
    assert model.config.vocab_size == len(cross) and model.config.max_position_embeddings == TINY["block_size"]
    assert tiny_world.manifest["training"]["cross_student"]["steps"] == TINY["cross_student"]["steps"]
    assert all(math.isfinite(tiny_world.manifest["evaluation"]["test_bpb"]["cross_student"][d]) for d in DOMAINS)
    for domain in DOMAINS:
        choices = [c for row in read_jsonl(tiny_world.domain_file(domain, "test_mc.jsonl")) for c in row["choices"]]
        for tokenizer in (main, cross):
            longest = max(len(ids) for ids in tokenizer(choices, add_special_tokens=False)["input_ids"])
            assert longest <= TINY["block_size"], (domain, tokenizer.vocab_size, longest)


def test_default_recipe_student_is_several_times_smaller():
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    recipe = build.RECIPES["default"]
    vocab = {f"t{i}": i for i in range(recipe["vocab_size"] - 1)} | {build.EOT: recipe["vocab_size"] - 1}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token=build.EOT)),
                                        eos_token=build.EOT)
    non_embedding = {}
    for name in ("teacher", "student"):
        model = build.make_model(recipe[name], tokenizer, recipe["block_size"])
        total = sum(p.numel() for p in model.parameters())
        non_embedding[name] = total - model.get_input_embeddings().weight.numel()
    assert non_embedding["teacher"] >= 4 * non_embedding["student"]


def test_second_call_reuses_the_cache(tiny_world, tiny_home):
    marker = tiny_world.root / "world.json"
    before = marker.stat().st_mtime_ns
    again = ensure_world(tiny_home, "tiny", progress=False)
    assert marker.stat().st_mtime_ns == before
    assert again.manifest == tiny_world.manifest and again.root == tiny_world.root


def test_changed_recipe_rebuilds_once_even_with_two_callers(tiny_world, tmp_path, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(tiny_world.root.parent, home / "demo")  # a stale world from an older recipe
    monkeypatch.setattr(build, "RECIPE_VERSION", build.RECIPE_VERSION + 1)

    worlds: list[World] = []
    callers = [threading.Thread(target=lambda: worlds.append(ensure_world(home, "tiny", progress=False)))
               for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()

    assert len(worlds) == 2
    assert worlds[0].manifest == worlds[1].manifest, "the second caller waited and reused the first build"
    assert worlds[0].manifest["recipe_hash"] == build.recipe_hash(TINY) != tiny_world.manifest["recipe_hash"]
    assert json.loads((home / "demo" / "tiny" / "world.json").read_text()) == worlds[0].manifest
    leftovers = [p.name for p in (home / "demo").iterdir() if p.name.startswith(".tiny.") and p.name != ".tiny.lock"]
    assert leftovers == []


def test_a_world_checked_by_this_python_opens_without_regenerating_its_corpus(tiny_world, tiny_home, monkeypatch):
    """Every command that opens a demo:// suite calls ensure_world; regenerating the corpus there cost
    about a second a call (16 calls per suite)."""
    marker = tiny_world.root / "world.json"
    manifest = json.loads(marker.read_text())
    marker.write_text(json.dumps({**manifest, "checked_with": "another Python"}))  # as if made elsewhere
    again = ensure_world(tiny_home, "tiny", progress=False)  # the long way: regenerates, compares, marks
    assert again.root == tiny_world.root
    assert json.loads(marker.read_text())["checked_with"] == build._stdlib_id()

    def no_corpus(*args, **kwargs):
        raise AssertionError("the corpus was regenerated for a world this Python already checked")

    monkeypatch.setattr(build, "build_corpus", no_corpus)
    assert ensure_world(tiny_home, "tiny", progress=False).manifest == json.loads(marker.read_text())
