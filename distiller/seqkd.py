"""Sequence-level distillation (SeqKD; docs/on-policy.md): the teacher's own continuations, generated
once and stored, as training rows.

For each domain, ``prompts`` rows of ``prompt_tokens`` tokens are drawn (seeded) from the token
store's train split and the teacher continues each by ``new_tokens`` tokens (greedy, or sampled at a
``temperature`` > 0), KV-cached, a batch at a time. The rows [n, prompt + new] go to
``<root>/<fingerprint[:16]>/<domain>.safetensors`` with a manifest whose fingerprint is the digest of
the teacher's files, the store's key and the settings: every later run and loop round with the same
inputs finds them and the teacher does not run again; a run given generations of another teacher or
store is refused, naming the field. The folder is written whole or not at all.

A run with ``seq_kd`` samples its rows from these (the DDK mixture still picks the domain) and trains
CE + γ·KD on the continuation's tokens only (distiller/step.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from distiller.errors import InputError
from distiller.files import write_atomic_folder
from distiller.onpolicy import Policy, continue_prompts
from distiller.store import Blocks, TokenStore
from distiller.teacher_signal import fingerprint_of, teacher_fingerprint

MANIFEST = "generations.json"
VERSION = 1


@dataclass(frozen=True)
class GenerationSettings:
    prompts: int = 256  # per domain
    prompt_tokens: int = 64
    new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    seed: int = 0
    batch_size: int = 16


@dataclass
class TeacherGenerations:
    root: Path
    fingerprint: str
    rows: dict[str, torch.Tensor]  # domain → [n, prompt_tokens + new_tokens]
    prompt_tokens: int
    computed: bool = False  # True: the teacher ran this time
    seconds: float = 0.0


def identity(teacher_dir, store: TokenStore, domains: list[str], settings: GenerationSettings) -> dict:
    kept = {k: v for k, v in asdict(settings).items() if k != "batch_size"}  # batching changes no byte
    return {"teacher": teacher_fingerprint(teacher_dir), "store": store.key, "domains": sorted(domains), **kept,
            "format_version": VERSION}


def _prompts(store: TokenStore, domain: str, settings: GenerationSettings) -> torch.Tensor:
    blocks = Blocks(store.stream(domain, "train"), settings.prompt_tokens)
    if len(blocks) == 0:
        raise InputError(f"the store's {domain} train split is shorter than one {settings.prompt_tokens}-token prompt")
    generator = torch.Generator().manual_seed(settings.seed)
    picks = torch.randperm(len(blocks), generator=generator)[: settings.prompts].sort().values
    return torch.stack([blocks[int(i)] for i in picks])


def compute_generations(teacher_dir, store_dir, root: Path, settings: GenerationSettings | None = None,
                        domains: list[str] | None = None, progress_stream=None) -> TeacherGenerations:
    """Find the teacher's generations for these inputs under ``root``, or make them (a progress bar)."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    settings = settings or GenerationSettings()
    store = TokenStore(Path(store_dir))
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    store.check_tokenizer(tokenizer, "teacher")  # the rows are the student's ids: one vocabulary
    domains = sorted(domains or store.domains)
    ident = identity(teacher_dir, store, domains, settings)
    fingerprint = fingerprint_of(ident)
    out = Path(root) / fingerprint[:16]
    if (out / MANIFEST).is_file():  # the teacher's files are hashed once (a real teacher's are gigabytes)
        return open_generations(out, teacher_dir=teacher_dir, store=store, domains=domains, teacher_sha=ident["teacher"])
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, use_safetensors=True).eval()
    context = teacher.config.max_position_embeddings
    if settings.prompt_tokens + settings.new_tokens > context:
        raise InputError(f"--prompt-tokens {settings.prompt_tokens} + --new-tokens {settings.new_tokens} exceed the "
                         f"teacher's context of {context} tokens")
    policy = Policy(prompt_tokens=settings.prompt_tokens, new_tokens=settings.new_tokens,
                    temperature=settings.temperature or 1.0)
    prompts = {d: _prompts(store, d, settings) for d in domains}
    bar = tqdm(total=sum(len(p) for p in prompts.values()), unit="prompt", desc="teacher generations",
               file=progress_stream, mininterval=1.0)
    rows = {}
    for domain in domains:
        done = []
        for i, batch in enumerate(prompts[domain].split(settings.batch_size)):
            done.append(continue_prompts(teacher, batch, policy, tokenizer.eos_token_id, seed=settings.seed + i,
                                         greedy=settings.temperature == 0))
            bar.update(len(batch))
        rows[domain] = torch.cat(done)
    bar.close()

    def fill(folder: Path) -> None:
        from safetensors.torch import save_file

        for domain, tensor in rows.items():
            save_file({"rows": tensor.contiguous()}, folder / f"{domain}.safetensors")
        (folder / MANIFEST).write_text(json.dumps({"fingerprint": fingerprint, "identity": ident}, indent=1))

    write_atomic_folder(out, fill)
    return TeacherGenerations(out, fingerprint, rows, settings.prompt_tokens, computed=True,
                              seconds=time.perf_counter() - started)


def open_generations(path, *, teacher_dir, store: TokenStore, domains: list[str],
                     teacher_sha: str | None = None) -> TeacherGenerations:
    """Stored generations for a run, or InputError naming what does not match the run's teacher, store
    or domains."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise InputError(f"--seq-kd {path}: no {MANIFEST} there; give a folder `kdh distill --seq-kd` made")
    manifest = json.loads((path / MANIFEST).read_text())
    stored = manifest["identity"]
    now = {"teacher": teacher_sha or teacher_fingerprint(teacher_dir), "store": store.key}
    for field, value in now.items():
        if stored.get(field) != value:
            raise InputError(f"--seq-kd {path}: made for another {field} ({str(stored.get(field))[:12]}…, this run's "
                             f"is {value[:12]}…); generate them again for this {field}")
    missing = sorted(set(domains) - set(stored["domains"]))
    if missing:
        raise InputError(f"--seq-kd {path}: holds no generations for domain(s) {', '.join(missing)}")
    rows = {d: load_file(path / f"{d}.safetensors")["rows"] for d in domains}
    return TeacherGenerations(path, manifest["fingerprint"], rows, stored["prompt_tokens"])
