"""Checkpoints that are never half-written, and a resume that skips any that are.

A checkpoint is a folder ``step-NNNNNNN`` under ``<output>/checkpoints``: the student as a standard
transformers folder (safetensors), ``training.pt`` (optimiser, scheduler and RNG states, each rank's
under several processes, read back with ``weights_only=True``, so no code is unpickled) and
``state.json`` (step, sampler position, domain weights and their history, and a sha256 of every
file), and for DSKD ``projectors.safetensors``:
the projectors train with the student and a resume needs them, but they are no part of the final
student, which stays a plain transformers folder. It is written into a temporary
folder and renamed into place, so a crash leaves either the whole checkpoint or none; on resume,
one whose files do not match their recorded hashes is skipped for the previous good one.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from distiller.errors import InputError
from distiller.files import sha256_file, write_atomic_folder

log = logging.getLogger(__name__)
_STEP_DIR = re.compile(r"^step-(\d+)$")
PROJECTORS = "projectors.safetensors"


def save_checkpoint(folder: Path, step: int, student, tokenizer, training: dict, state: dict, keep: int = 2,
                    projectors: torch.nn.Module | None = None, student_state: dict | None = None) -> Path:
    """Write checkpoint ``step`` atomically; keep the newest ``keep`` checkpoints. ``student_state``:
    the student's whole state when the module holds only a shard of it (distiller/sharding.py)."""

    def fill(tmp: Path) -> None:
        student.save_pretrained(tmp / "student", safe_serialization=True, state_dict=student_state)
        tokenizer.save_pretrained(tmp / "student")
        torch.save(training, tmp / "training.pt")
        if projectors is not None:
            save_file({k: v.detach().contiguous() for k, v in projectors.state_dict().items()},
                      tmp / PROJECTORS)
        files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / "state.json").write_text(json.dumps({**state, "step": step, "files": files}, indent=1))

    path = write_atomic_folder(folder / f"step-{step:07d}", fill)
    for old in checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return path


def checkpoints(folder: Path) -> list[Path]:
    """Checkpoint folders, oldest first (temporary folders of unfinished writes are not listed)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def verify(path: Path) -> dict | None:
    """The checkpoint's state if every file matches its recorded hash, else None."""
    try:
        state = json.loads((path / "state.json").read_text())
        for name, digest in state["files"].items():
            if sha256_file(path / name) != digest:
                log.warning("checkpoint %s: %s does not match its hash; skipping it", path, name)
                return None
        return state
    except (OSError, ValueError, KeyError) as err:
        log.warning("checkpoint %s is incomplete or unreadable (%s); skipping it", path, err)
        return None


def latest_good(folder: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that verifies, or None."""
    for path in reversed(checkpoints(folder)):
        state = verify(path)
        if state is not None:
            return path, state
    return None


def load_training(path: Path) -> dict:
    return torch.load(path / "training.pt", weights_only=True)


def load_projectors(path: Path) -> dict[str, torch.Tensor]:
    """The DSKD projectors' state dict saved with checkpoint ``path``."""
    if not (path / PROJECTORS).is_file():
        raise InputError(f"checkpoint {path} has no {PROJECTORS}: it was written by another --kd mode")
    return load_file(path / PROJECTORS)
