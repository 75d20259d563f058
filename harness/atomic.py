"""Folders that appear whole or not at all (the demo world, checkpoints, the final student)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def _fsync_tree(folder: Path) -> None:
    """Flush every file, so the rename below never publishes data still in the page cache."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def temp_prefix(final: Path) -> str:
    """The name prefix of the temporary folders ``write_atomic_folder`` makes beside ``final``."""
    return f".{final.name}.tmp-"


def write_atomic_folder(final: Path, fill) -> Path:
    """Call ``fill(tmp_folder)``, then move the folder to ``final`` in one rename (replacing an
    older one). Nothing appears at ``final`` unless ``fill`` completed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(final), dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp's 0o700 would follow the folder to its final path
    try:
        fill(tmp)
        _fsync_tree(tmp)
        if final.exists():
            retired = final.parent / f".{final.name}.old-{os.getpid()}"
            os.rename(final, retired)
            os.rename(tmp, final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
