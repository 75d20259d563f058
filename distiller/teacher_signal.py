"""Pay for the teacher once: its sparse signal over a token store, computed one time (docs/teacher-signal.md).

``compute_signal`` runs the teacher over every training block of a store and keeps, per position,
its top-k ids and log-probabilities (or N ids sampled from its distribution: Sparse Logit Sampling),
in the format of distiller/signal_store.py; with them, DDK's teacher perplexities per domain, so a
distillation from the signal loads no teacher at all. It works as distiller/prepare.py does: parts
are written whole into a partial folder beside the signal (a killed run keeps its finished parts and
the next run with the same fingerprint does only the rest), the manifest last, then one rename.
Under ``accelerate launch`` each rank computes its share of the parts (``rank_share``) and the
main process publishes. The fingerprint is the digest of what the bytes depend on: the teacher's
files, the store's key, the block size, k or N, the temperature, the mode and the seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distiller.config import SignalSettings  # plain values, importable without torch (kdh's parser reads them)
from distiller.data import _derived_seed, count_blocks
from distiller.errors import InputError
from distiller.files import sha256_named_files, swap_folder, write_atomic_text
from distiller.measure import domain_perplexities, last_hidden
from distiller.signal_store import (FORMAT, MANIFEST, MODES, VERSION, TeacherSignal, encode_log_probs, id_bytes,
                                    pack_ids, part_files)
from distiller.store import Blocks, TokenStore


@dataclass
class ComputedSignal:
    root: Path
    fingerprint: str
    computed: bool  # False: the signal was there already and the teacher did not run
    positions: int = 0  # teacher positions this run computed
    seconds: float = 0.0


def teacher_fingerprint(folder: str | Path) -> str:
    """The digest of a model folder's files (config, weights, tokenizer), names and bytes."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    if not any(p.name == "config.json" for p in files):
        raise InputError(f"{folder}: not a transformers model folder (no config.json)")
    return sha256_named_files(files)


def effective_block(block_size: int, *model_dirs: str | Path) -> int:
    """The block size the trainer uses: capped by every model's context."""
    from transformers import AutoConfig

    contexts = [AutoConfig.from_pretrained(d).max_position_embeddings for d in model_dirs]
    return min([block_size, *contexts])


def signal_identity(teacher_sha: str, store: TokenStore, block: int, settings: SignalSettings,
                    domains: list[str]) -> dict:
    return {"teacher": teacher_sha, "store": store.key, "domains": sorted(domains), "block": block, "k": settings.k,
            "mode": settings.mode,
            "temperature": settings.temperature, "seed": settings.seed if settings.mode == "sampled" else None,
            "val_blocks": settings.val_blocks, "part_blocks": settings.part_blocks, "format_version": VERSION}


def fingerprint_of(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def rank_share(n_items: int, rank: int, world: int) -> list[int]:
    """The items rank ``rank`` of ``world`` computes: every world-th, so the ranks' shares differ by
    at most one item and together cover each item once."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank {rank} of {world}")
    return list(range(rank, n_items, world))


def check_settings(settings: SignalSettings, vocab: int) -> None:
    if settings.mode not in MODES:
        raise InputError(f"--mode {settings.mode!r}: choose one of {', '.join(MODES)}")
    if not (isinstance(settings.k, int) and 1 <= settings.k <= vocab):
        raise InputError(f"-k {settings.k!r}: the entries a position must be between 1 and the teacher's "
                         f"vocabulary ({vocab})")
    if not settings.temperature > 0:
        raise InputError(f"--temperature must be > 0, got {settings.temperature}")


@torch.no_grad()
def block_entries(teacher, rows: torch.Tensor, settings: SignalSettings, generator) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's entries for rows [n, block + 1]: (ids [n, block, m], sorted log-probs [n, block, m])."""
    hidden = last_hidden(teacher, rows[:, :-1])
    head = teacher.get_output_embeddings()
    flat = hidden.reshape(-1, hidden.shape[-1])
    ids, lps = [], []
    for h in flat.split(settings.chunk_size):
        log_p = F.log_softmax(F.linear(h, head.weight, getattr(head, "bias", None)).float() / settings.temperature, -1)
        if settings.mode == "top-k":
            lp, i = log_p.topk(settings.k, dim=-1)
        else:
            i = torch.multinomial(log_p.exp(), settings.k, replacement=True, generator=generator)
            lp, order = log_p.gather(-1, i).sort(dim=-1, descending=True)  # the coder wants them sorted
            i = i.gather(-1, order)
        ids.append(i.cpu())
        lps.append(lp.cpu())
    shape = (rows.shape[0], rows.shape[1] - 1, settings.k)
    return torch.cat(ids).reshape(shape).numpy(), torch.cat(lps).reshape(shape).double().numpy()


def _write_part(partial: Path, domain: str, part: int, ids: np.ndarray, lps: np.ndarray, width: int) -> None:
    """One part's two files, each renamed into place whole; the ids last, so a part with ids is done."""
    ids_path, lp_path = part_files(partial, domain, part)
    for path, data in ((lp_path, encode_log_probs(lps.reshape(-1, lps.shape[-1]))),
                       (ids_path, pack_ids(ids, width))):
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(np.ascontiguousarray(data).tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def _parts(store: TokenStore, block: int, domains: list[str], part_blocks: int) -> dict[str, list[int]]:
    """Per domain, the number of blocks in each part."""
    out = {}
    for domain in domains:
        stream = store.stream(domain, "train")
        n = count_blocks(len(stream), block, stream.documents, domain)
        out[domain] = [min(part_blocks, n - start) for start in range(0, n, part_blocks)]
    return out


def compute_signal(teacher_dir: str | Path, store_dir: str | Path, out: Path | None = None, *,
                   root: Path | None = None, settings: SignalSettings | None = None,
                   student_dir: str | Path | None = None, domains: list[str] | None = None, device: str = "auto",
                   progress_stream=None) -> ComputedSignal:
    """Find or make the signal of ``teacher_dir`` over the store's ``domains`` (default: all) at ``out``, or at
    ``root/<fingerprint[:16]>`` when no ``out`` is given (content-addressed: the same inputs find the
    same signal). ``student_dir`` caps the block size by the student's context too, as the trainer does.

    Long on purpose: find, set up, compute this rank's share, publish, in one place."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    settings = settings or SignalSettings()
    store = TokenStore(Path(store_dir))
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    store.check_tokenizer(tokenizer, "teacher")  # one vocabulary: the signal's ids are the student's ids
    check_settings(settings, len(tokenizer))
    block = effective_block(settings.block_size, teacher_dir, *([student_dir] if student_dir else []))
    domains = sorted(domains or store.domains)
    for domain in domains:
        store.stream(domain, "train")  # bad input, naming the store's domains, for one it does not hold
    identity = signal_identity(teacher_fingerprint(teacher_dir), store, block, settings, domains)
    fingerprint = fingerprint_of(identity)
    out = Path(out) if out is not None else Path(root) / fingerprint[:16]
    if (out / MANIFEST).is_file() and json.loads((out / MANIFEST).read_text()).get("fingerprint") == fingerprint:
        TeacherSignal(out)  # whole, or bad input
        return ComputedSignal(out, fingerprint, computed=False, seconds=time.perf_counter() - started)

    accelerator = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, use_safetensors=True)
    teacher.requires_grad_(False).eval().to(accelerator.device)
    width = id_bytes(teacher.get_output_embeddings().weight.shape[0])
    partial = out.parent / f".{out.name}.partial-{fingerprint[:16]}"
    if accelerator.is_main_process:
        for stale in out.parent.glob(f".{out.name}.partial-*"):
            if stale != partial:  # a killed run of other inputs: its parts are of no use now
                shutil.rmtree(stale, ignore_errors=True)
    parts = _parts(store, block, domains, settings.part_blocks)
    for domain in parts:
        (partial / domain).mkdir(parents=True, exist_ok=True)
    work = [(d, p) for d in sorted(parts) for p in range(len(parts[d]))]
    todo = [work[i] for i in rank_share(len(work), accelerator.process_index, accelerator.num_processes)
            if not part_files(partial, *work[i])[0].is_file()]
    bar = tqdm(total=sum(parts[d][p] for d, p in todo), unit="block", desc="teacher signal", file=progress_stream,
               disable=not accelerator.is_main_process, mininterval=1.0)
    positions = 0
    for domain, part in todo:
        blocks = Blocks(store.stream(domain, "train"), block + 1)
        generator = torch.Generator(device=accelerator.device).manual_seed(_derived_seed(settings.seed, domain, part))
        ids, lps = [], []
        first = part * settings.part_blocks
        for start in range(first, first + parts[domain][part], settings.batch_size):
            stop = min(start + settings.batch_size, first + parts[domain][part])
            rows = torch.stack([blocks[i] for i in range(start, stop)]).to(accelerator.device)
            i, lp = block_entries(teacher, rows, settings, generator)
            ids.append(i)
            lps.append(lp)
            bar.update(stop - start)
            positions += (stop - start) * block
        _write_part(partial, domain, part, np.concatenate(ids), np.concatenate(lps), width)
    bar.close()

    validation = {d: torch.stack(list(Blocks(store.stream(d, "validation"), block + 1, settings.val_blocks)))
                  for d in domains}
    for d, rows in validation.items():
        if len(rows) == 0:
            raise InputError(f"domain {d!r}: its validation stream holds no block of {block + 1} tokens")
    perplexity = domain_perplexities(teacher, validation, accelerator, settings.chunk_size)  # every rank takes part
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        manifest = {"format": FORMAT, "version": VERSION, "fingerprint": fingerprint, "identity": identity,
                    "entries": settings.k, "id_bytes": width, "part_blocks": settings.part_blocks,
                    "teacher_name": Path(str(teacher_dir)).name, "teacher_perplexity": perplexity,
                    "domains": {d: {"blocks": sum(sizes), "part_sizes": sizes} for d, sizes in parts.items()}}
        for stale in partial.rglob(".*"):
            stale.unlink()
        write_atomic_text(partial / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        swap_folder(partial, out)
    accelerator.wait_for_everyone()
    return ComputedSignal(out, fingerprint, computed=True, positions=positions, seconds=time.perf_counter() - started)


def open_for_run(path: str | Path, *, teacher_dir: str | Path, store: TokenStore, block: int,
                 temperature: float, val_blocks: int, domains: list[str]) -> TeacherSignal:
    """The signal at ``path``, checked against the run that will train from it (bad input if not its)."""
    signal = TeacherSignal(Path(path))
    signal.check({"teacher": teacher_fingerprint(teacher_dir), "store": store.key, "block": block,
                  "temperature": temperature, "val_blocks": val_blocks})
    missing = sorted(set(domains) - set(signal.identity["domains"]))
    if missing:
        raise InputError(f"the teacher signal {signal.root} covers the domains {', '.join(signal.identity['domains'])}, "
                         f"not {', '.join(missing)}: compute one over the run's domains (`kdh teacher-signal`)")
    return signal
