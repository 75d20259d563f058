"""Files that appear whole or not at all, and digests of their bytes.

The leaf every other module may import: it imports nothing from the project. Checkpoints, the final
student, the demo world, downloaded champions and cache entries are written through it, so a crash
leaves either the old version or the new one, never half of one; fingerprints of models, suites,
checkpoints and data files are digests of the same kind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

_BLOCK = 1 << 22  # bytes read at a time while hashing


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
        swap_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def swap_folder(ready: Path, final: Path) -> None:
    """Rename the finished folder ``ready`` to ``final``, retiring an older ``final`` first."""
    if final.exists():
        retired = final.parent / f".{final.name}.old-{os.getpid()}"
        os.rename(final, retired)
        os.rename(ready, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(ready, final)


def write_atomic_text(final: Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``final``, then rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0o600 would follow the file to its final name
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def _update(digest, path: Path) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of one file's bytes."""
    digest = hashlib.sha256()
    _update(digest, Path(path))
    return digest.hexdigest()


def sha256_named_files(paths: Iterable[str | Path]) -> str:
    """Hex sha256 over several files, each as its name then its bytes, in the order given: a
    renamed or reordered file changes the digest, a moved folder does not."""
    digest = hashlib.sha256()
    for path in map(Path, paths):
        digest.update(path.name.encode())
        _update(digest, path)
    return digest.hexdigest()
