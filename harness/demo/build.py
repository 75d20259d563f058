"""Build the demo world into the kdh home: data files, tokenizer, teacher, student, a second student
with its own tokenizer (for cross-vocabulary distillation), and a manifest.

Built once per recipe: ``ensure_world`` compares the recipe hash and the fingerprints of the corpus
and of the test items with the world's ``world.json`` and returns at once when they match. A build
goes into a temporary sibling folder, writes ``world.json`` last and is then renamed into place,
under a file lock, so a half-built world is never visible at the final path and two first builds
do not collide.

torch and transformers are imported inside the functions that need them, so the cached path (and
``import harness.demo``) stays fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import console
from harness.demo import corpus as corpus_module, items as items_module
from harness.demo.checks import encode_texts, evaluate_models
from harness.demo.corpus import DOMAINS, _unit_hash, build_corpus, corpus_fingerprint
from harness.demo.items import build_generation_items, build_mc_items
from distiller.files import temp_prefix, write_atomic_folder
from harness.home import configure_environment

RECIPE_VERSION = 3  # bump when code changes what a recipe builds (2: the cross-vocabulary student; 3: generation items)
EOT = "<|endoftext|>"

_NATURAL = "natural"  # in proportion to each domain's train tokens
# The student mostly sees code and prose: it lags the teacher a little there and a lot on
# arithmetic and records, the uneven gap that the DDK distiller exists to close.
_LOPSIDED = {"code": 0.46, "prose": 0.46, "arithmetic": 0.04, "records": 0.04}
_TRAINING = {"batch_size": 16, "lr": 4e-3, "min_lr": 4e-4, "warmup_steps": 30, "weight_decay": 0.1, "grad_clip": 1.0}

RECIPES: dict[str, dict] = {
    "default": {
        "corpus": {"seed": 1234, "code_bytes": 1_600_000, "prose_bytes": 1_000_000, "arithmetic_docs": 2000,
                   "records_docs": 1400, "split_fractions": {"validation": 0.1, "test": 0.2}},
        "mc_items": 300,
        "gen_items": 40,  # per domain: prompt → reference items for suites/generation.yaml
        "vocab_size": 1024,
        "block_size": 256,
        "teacher": {"layers": 4, "width": 128, "heads": 4, "ffn": 384, "steps": 420, "seed": 1,
                    "mixture": _NATURAL, **_TRAINING},
        "student": {"layers": 2, "width": 64, "heads": 4, "ffn": 192, "steps": 200, "seed": 2,
                    "mixture": _LOPSIDED, **_TRAINING},
        # The same student with its own tokenizer: another vocabulary size, and merges learnt from
        # another half of the train documents, so teacher and student share no token ids.
        "cross_student": {"layers": 2, "width": 64, "heads": 4, "ffn": 192, "steps": 200, "seed": 3,
                          "mixture": _LOPSIDED, **_TRAINING,
                          "tokenizer": {"vocab_size": 768, "sample": 0.5, "seed": 7}},
        "eval_mc_items": 100,  # per domain, for the manifest; the suite scores the full files
    },
    "tiny": {
        "corpus": {"seed": 1234, "code_bytes": 60_000, "prose_bytes": 40_000, "arithmetic_docs": 150,
                   "records_docs": 80, "split_fractions": {"validation": 0.1, "test": 0.2}},
        "mc_items": 20,
        "gen_items": 12,
        "vocab_size": 384,
        "block_size": 128,  # lm-eval refuses a choice longer than the model's context
        "teacher": {"layers": 2, "width": 48, "heads": 4, "ffn": 128, "steps": 40, "seed": 1,
                    "mixture": _NATURAL, **_TRAINING, "batch_size": 8, "warmup_steps": 5},
        "student": {"layers": 1, "width": 16, "heads": 2, "ffn": 48, "steps": 40, "seed": 2,
                    "mixture": _LOPSIDED, **_TRAINING, "batch_size": 8, "warmup_steps": 5},
        "cross_student": {"layers": 1, "width": 16, "heads": 2, "ffn": 48, "steps": 40, "seed": 3,
                          "mixture": _LOPSIDED, **_TRAINING, "batch_size": 8, "warmup_steps": 5,
                          "tokenizer": {"vocab_size": 320, "sample": 0.5, "seed": 7}},
        "eval_mc_items": 10,
    },
}


@dataclass(frozen=True)
class World:
    root: Path
    size: str
    data_dir: Path
    tokenizer_dir: Path
    teacher_dir: Path
    student_dir: Path
    cross_tokenizer_dir: Path  # the cross-vocabulary student's own tokenizer
    cross_student_dir: Path
    manifest: dict = field(compare=False, repr=False)

    def domain_file(self, domain: str, name: str) -> Path:
        return self.data_dir / domain / name

    @classmethod
    def at(cls, root: Path, size: str, manifest: dict) -> "World":
        return cls(root, size, root / "data", root / "tokenizer", root / "teacher", root / "student",
                   root / "cross_tokenizer", root / "cross_student", manifest)


def world_recipe(size: str) -> dict:
    if size not in RECIPES:
        raise ValueError(f"unknown demo world size {size!r}; allowed sizes: {', '.join(RECIPES)}")
    return RECIPES[size]


def recipe_hash(recipe: dict) -> str:
    text = json.dumps({"recipe_version": RECIPE_VERSION, "recipe": recipe}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def ensure_world(home: Path, size: str = "default", progress: bool = True) -> World:
    """The demo world of ``size`` under ``home/demo/size``, built first if missing or stale."""
    recipe = world_recipe(size)
    demo_dir = Path(home) / "demo"
    root = demo_dir / size
    # A world this standard library already checked is current without regenerating its corpus
    # (about 1 s, paid by every command that opens a demo:// suite).
    checked = {"recipe_hash": recipe_hash(recipe), "checked_with": _stdlib_id()}
    if (world := _current(root, size, checked)) is not None:
        return world
    corpus = build_corpus(recipe["corpus"])  # the corpus comes from the stdlib, which differs between Pythons
    seed = recipe["corpus"]["seed"]
    mc = {d: build_mc_items(d, corpus[d]["test"], recipe["mc_items"], seed, max_choice_bytes=recipe["block_size"])
          for d in DOMAINS}
    # Generation prompts keep room for the template's 32 generated tokens in the model's context.
    gen = {d: build_generation_items(d, corpus[d]["test"], recipe["gen_items"], seed,
                                     max_prompt_bytes=recipe["block_size"] - 32) for d in DOMAINS}
    want = {"recipe_hash": recipe_hash(recipe), "corpus_fingerprint": corpus_fingerprint(corpus),
            "mc_fingerprint": hashlib.sha256(json.dumps(mc, sort_keys=True).encode()).hexdigest(),
            "gen_fingerprint": hashlib.sha256(json.dumps(gen, sort_keys=True).encode()).hexdigest()}
    if (world := _current(root, size, want)) is not None:
        _mark_checked(root, {**world.manifest, **checked})
        return world
    demo_dir.mkdir(parents=True, exist_ok=True)
    with _locked(demo_dir / f".{size}.lock"):
        if (world := _current(root, size, want)) is not None:  # another process built it meanwhile
            return world
        for stale in demo_dir.glob(temp_prefix(root) + "*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        manifest = {"size": size, "recipe": recipe, **want, **checked}

        def fill(building: Path) -> None:
            manifest.update(_build(building, recipe, corpus, mc, gen, progress))
            (building / "world.json").write_text(json.dumps(manifest, indent=2) + "\n")  # last: marks it complete

        write_atomic_folder(root, fill)
        return World.at(root, size, manifest)


def _current(root: Path, size: str, want: dict) -> World | None:
    try:
        manifest = json.loads((root / "world.json").read_text())
    except (OSError, ValueError):
        return None
    world = World.at(root, size, manifest)
    complete = all((folder / "model.safetensors").is_file()
                   for folder in (world.teacher_dir, world.student_dir, world.cross_student_dir))
    if complete and all(manifest.get(key) == value for key, value in want.items()):
        return world
    return None


def _stdlib_id() -> str:
    """What the corpus and the items are made from: this Python's version and stdlib folder, and the
    source of the generators (so an edited generator is caught even without a new RECIPE_VERSION)."""
    sources = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (corpus_module, items_module)))
    return f"{sys.version} {os.path.realpath(sysconfig.get_paths()['stdlib'])} {sources.hexdigest()[:16]}"


def _mark_checked(root: Path, manifest: dict) -> None:
    """Record that this stdlib regenerated the world's corpus and found it current (best effort)."""
    tmp = root / f".world.json.{os.getpid()}"
    try:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, root / "world.json")
    except OSError:  # a read-only home: the next call checks the long way again
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _say(progress: bool, message: str) -> None:
    if progress:
        console.note(f"[kdh demo] {message}")


# ---------------------------------------------------------------------------------------------
# the build, top to bottom


def _build(root: Path, recipe: dict, corpus: dict, mc: dict, gen: dict, progress: bool) -> dict:
    configure_environment()
    import torch
    from transformers.utils import logging as hf_logging

    started = time.time()
    threads, hf_bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()  # save_pretrained's own bars; restored below
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(cores)  # all the cores this process may use; restored below
    try:
        _say(progress, f"building the demo world in {root.parent} (once per recipe)")
        domains = write_data(root / "data", corpus, mc, gen)

        tokenizer = train_tokenizer(corpus, recipe["vocab_size"], recipe["block_size"])
        tokenizer.save_pretrained(root / "tokenizer")
        train_streams = {d: encode_stream(tokenizer, corpus[d]["train"]) for d in DOMAINS}

        training, models = {}, {}
        for name in ("teacher", "student"):
            model = make_model(recipe[name], tokenizer, recipe["block_size"])
            training[name] = train_model(model, train_streams, recipe[name], recipe["block_size"], name, progress)
            model.save_pretrained(root / name, safe_serialization=True)
            tokenizer.save_pretrained(root / name)  # each model folder is self-contained
            models[name] = model

        # The cross-vocabulary student: its own tokenizer, the same architecture and data mixture.
        hp = recipe["cross_student"]
        cross_tokenizer = train_tokenizer(corpus, hp["tokenizer"]["vocab_size"], recipe["block_size"],
                                          sample=(hp["tokenizer"]["sample"], hp["tokenizer"]["seed"]))
        cross_tokenizer.save_pretrained(root / "cross_tokenizer")
        cross_streams = {d: encode_stream(cross_tokenizer, corpus[d]["train"]) for d in DOMAINS}
        cross = make_model(hp, cross_tokenizer, recipe["block_size"])
        training["cross_student"] = train_model(cross, cross_streams, hp, recipe["block_size"], "cross_student",
                                                progress)
        cross.save_pretrained(root / "cross_student", safe_serialization=True)
        cross_tokenizer.save_pretrained(root / "cross_student")

        _say(progress, "measuring held-out bits per byte and multiple-choice accuracy")
        evaluation = evaluate_models(models, tokenizer, corpus, mc, recipe)
        crossed = evaluate_models({"cross_student": cross}, cross_tokenizer, corpus, mc, recipe)
        for key, value in crossed.items():
            if isinstance(value, dict):
                evaluation[key].update(value)
    finally:
        torch.set_num_threads(threads)
        if hf_bars:
            hf_logging.enable_progress_bar()
    seconds = round(time.time() - started, 1)
    bpb = evaluation["test_bpb"]
    _say(progress, "held-out bits per byte, teacher vs student vs cross-vocabulary student: " + ", ".join(
        f"{d} {bpb['teacher'][d]:.2f} vs {bpb['student'][d]:.2f} vs {bpb['cross_student'][d]:.2f}" for d in DOMAINS))
    _say(progress, f"demo world built in {seconds} s")
    return {"domains": domains, "training": training, "evaluation": evaluation, "build_seconds": seconds,
            "built_with": {"python": platform.python_version(), "torch": torch.__version__}}


def write_data(data_dir: Path, corpus: dict, mc: dict, gen: dict) -> dict:
    files = {"train.jsonl": "train", "validation.jsonl": "validation", "test_ppl.jsonl": "test"}
    summary = {}
    for domain in DOMAINS:
        folder = data_dir / domain
        folder.mkdir(parents=True)
        for filename, split in files.items():
            _write_jsonl(folder / filename, ({"text": doc} for doc in corpus[domain][split]))
        _write_jsonl(folder / "test_mc.jsonl", mc[domain])
        _write_jsonl(folder / "test_gen.jsonl", gen[domain])
        summary[domain] = {split: {"docs": len(docs), "bytes": sum(len(d.encode()) for d in docs)}
                           for split, docs in corpus[domain].items()}
        summary[domain]["test_mc"] = {"items": len(mc[domain])}
        summary[domain]["test_gen"] = {"items": len(gen[domain])}
    return summary


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def train_tokenizer(corpus: dict, vocab_size: int, block_size: int, sample: tuple[float, int] | None = None):
    """Byte-level BPE on the train split of every domain. Digits are split one by one (as Llama
    does) so that arithmetic is learnable by a small model rather than a lookup of number tokens.
    ``sample=(fraction, seed)`` learns the merges from that seeded share of the documents only."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    docs = (doc for d in DOMAINS for doc in corpus[d]["train"]
            if sample is None or _unit_hash(sample[1], "tokenizer", d, doc) < sample[0])
    bpe.train_from_iterator(docs, trainer)
    # one token is bos, eos and pad: lm-eval's rolling loglikelihood starts each window from it
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOT, eos_token=EOT, pad_token=EOT,
                                   model_max_length=block_size)


def encode_stream(tokenizer, docs: list[str]):
    """One long token stream per domain, documents separated by EOT, as in GPT pretraining."""
    import torch

    ids: list[int] = []
    for encoded in encode_texts(tokenizer, docs):
        ids += [tokenizer.eos_token_id, *encoded]
    return torch.tensor(ids, dtype=torch.long)


def make_model(hp: dict, tokenizer, block_size: int):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    eot = tokenizer.eos_token_id
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hp["width"], intermediate_size=hp["ffn"],
                         num_hidden_layers=hp["layers"], num_attention_heads=hp["heads"],
                         num_key_value_heads=hp["heads"], max_position_embeddings=block_size,
                         tie_word_embeddings=True, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    torch.manual_seed(hp["seed"])
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    return model


def train_model(model, streams: dict, hp: dict, block_size: int, desc: str, progress: bool) -> dict:
    """AdamW, linear warmup then cosine decay, gradient clipping; each row of a batch is a random
    window from a domain drawn from the model's mixture."""
    import torch
    import torch.nn.functional as F
    generator = torch.Generator().manual_seed(hp["seed"])
    mixture = {d: len(streams[d]) for d in DOMAINS} if hp["mixture"] == _NATURAL else hp["mixture"]
    domains = [d for d in DOMAINS if mixture[d] > 0]
    weights = torch.tensor([mixture[d] for d in domains], dtype=torch.float)
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matrices decay; norms do not
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": hp["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=hp["lr"], betas=(0.9, 0.95))

    def lr_at(step: int) -> float:
        if step < hp["warmup_steps"]:
            return hp["lr"] * (step + 1) / hp["warmup_steps"]
        progress_ = (step - hp["warmup_steps"]) / max(1, hp["steps"] - hp["warmup_steps"])
        return hp["min_lr"] + 0.5 * (hp["lr"] - hp["min_lr"]) * (1 + math.cos(math.pi * progress_))

    model.train()
    started, tokens, smooth_loss = time.time(), 0, None
    bar = console.bar(range(hp["steps"]), desc=desc, disable=not progress, leave=True)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        rows = torch.multinomial(weights, hp["batch_size"], replacement=True, generator=generator)
        windows = []
        for row in rows.tolist():
            stream = streams[domains[row]]
            start = torch.randint(0, len(stream) - block_size - 1, (1,), generator=generator).item()
            windows.append(stream[start : start + block_size + 1])
        batch = torch.stack(windows)
        inputs, targets = batch[:, :-1], batch[:, 1:]

        logits = model(input_ids=inputs).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hp["grad_clip"])
        optimizer.step()

        tokens += inputs.numel()
        smooth_loss = loss.item() if smooth_loss is None else 0.9 * smooth_loss + 0.1 * loss.item()
        bar.set_postfix(loss=f"{smooth_loss:.3f}", tok_s=f"{tokens / (time.time() - started):.0f}")
    bar.close()
    model.eval()
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    return {"params": total, "non_embedding_params": total - embedding, "steps": hp["steps"], "tokens": tokens,
            "mixture": {d: round(float(w / weights.sum()), 4) for d, w in zip(domains, weights)},
            "final_loss": round(smooth_loss, 4), "seconds": round(time.time() - started, 1)}
