"""A domain's corpus on disk → pieces of work → documents, streamed, never a whole file in memory.

A corpus is a list of paths, each a file or a folder:

- JSON Lines (``.jsonl``, ``.json``): one document per line, its ``"text"`` field;
- Parquet (``.parquet``): the ``text`` column;
- a Hugging Face dataset saved with ``save_to_disk`` (a folder with ``state.json``): its Arrow files'
  ``text`` column;
- plain text (``.txt``, ``.md``): one document per file;
- any other folder: every file of those kinds inside it, in sorted order.

Each source is cut into pieces (docs/token-store.md): byte ranges of a JSON Lines file that end at
a line break, groups of Parquet row groups, one Arrow file, a group of text files. A piece is the
unit of parallel work and of resuming after a kill; pieces depend on the bytes alone, so the same
corpus is always cut the same way and the store built from it is the same byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from distiller.errors import InputError
from distiller.files import sha256_file

PIECE_BYTES = 16 << 20  # text per piece: enough pieces to keep every core busy, a few seconds each
TEXT_SUFFIXES = {".txt", ".md"}
JSONL_SUFFIXES = {".jsonl", ".json"}
KINDS = ("jsonl", "parquet", "arrow", "text")


@dataclass(frozen=True)
class Piece:
    """One unit of work: a byte range of a JSON Lines file, row groups of a Parquet file, one Arrow
    file, or a group of text files (``paths``)."""

    kind: str
    paths: tuple[str, ...]
    start: int = 0  # jsonl: first byte; parquet: first row group
    stop: int = 0  # jsonl: end byte; parquet: end row group
    size: int = 0  # bytes of input, for the progress bar


@dataclass
class Document:
    text: str | None  # None: the bytes were not valid UTF-8
    where: str  # file and line or row, for messages


def _kind(path: Path) -> str | None:
    if path.suffix in JSONL_SUFFIXES:
        return "jsonl"
    if path.suffix == ".parquet":
        return "parquet"
    if path.suffix == ".arrow":
        return "arrow"
    if path.suffix in TEXT_SUFFIXES:
        return "text"
    return None


def _folder_files(folder: Path) -> list[tuple[str, Path]]:
    """(kind, file) inside a folder, walked in sorted order; a saved dataset gives its Arrow files."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
        raise InputError(f"corpus path {folder} is a DatasetDict saved with save_to_disk (splits: {', '.join(splits)}): "
                         f"name one split's folder, e.g. {folder / (splits[0] if splits else 'train')}")
    if (folder / "state.json").is_file():
        state = json.loads((folder / "state.json").read_text())
        return [("arrow", folder / f["filename"]) for f in state.get("_data_files", [])]
    files = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            files += _folder_files(child)
        elif _kind(child) is not None:
            files.append((_kind(child), child))
    return files


def source_files(path: Path) -> list[tuple[str, Path]]:
    """(kind, file) for every readable file of one corpus path, in a fixed order; bad input when
    there is none, naming the path and the kinds kdh reads."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"corpus path {path} does not exist")
    if path.is_dir():
        files = _folder_files(path)
    else:
        files = [(_kind(path), path)] if _kind(path) is not None else []
    if not files:
        raise InputError(f"corpus path {path} has no readable file: kdh reads JSON Lines (.jsonl with a \"text\" "
                         "field), Parquet (a text column), text files (.txt, .md; one document each) and datasets "
                         "saved with save_to_disk")
    return files


def fingerprint(paths: list[Path]) -> list[dict]:
    """Each source file's path, size and sha256: what the store's key is made of."""
    return [{"path": str(file), "kind": kind, "bytes": file.stat().st_size, "sha256": sha256_file(file)}
            for path in paths for kind, file in source_files(path)]


def _jsonl_pieces(path: Path) -> list[Piece]:
    size, pieces, start = path.stat().st_size, [], 0
    with open(path, "rb") as fh:
        while start < size:
            fh.seek(min(start + PIECE_BYTES, size))
            fh.readline()  # on to the end of the line the cut falls in
            stop = min(fh.tell(), size)
            pieces.append(Piece("jsonl", (str(path),), start, stop, stop - start))
            start = stop
    return pieces


def _parquet_pieces(path: Path) -> list[Piece]:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    pieces, first, size = [], 0, 0
    for group in range(meta.num_row_groups):
        size += meta.row_group(group).total_byte_size
        if size >= PIECE_BYTES or group == meta.num_row_groups - 1:
            pieces.append(Piece("parquet", (str(path),), first, group + 1, size))
            first, size = group + 1, 0
    return pieces


def pieces(paths: list[Path]) -> list[Piece]:
    """The pieces of a corpus, in document order."""
    out: list[Piece] = []
    texts: list[Path] = []

    def flush_texts():
        if texts:
            out.append(Piece("text", tuple(map(str, texts)), size=sum(t.stat().st_size for t in texts)))
            texts.clear()

    for path in paths:
        for kind, file in source_files(path):
            if kind != "text":
                flush_texts()
            if kind == "jsonl":
                out += _jsonl_pieces(file)
            elif kind == "parquet":
                out += _parquet_pieces(file)
            elif kind == "arrow":
                out.append(Piece("arrow", (str(file),), size=file.stat().st_size))
            else:
                texts.append(file)
                if sum(t.stat().st_size for t in texts) >= PIECE_BYTES:
                    flush_texts()
    flush_texts()
    return out


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _jsonl_documents(piece: Piece) -> Iterator[Document]:
    path = piece.paths[0]
    with open(path, "rb") as fh:
        fh.seek(piece.start)
        offset = piece.start
        while offset < piece.stop:
            raw = fh.readline()
            where = f"{path} (byte {offset})"
            offset += len(raw)
            if not raw.strip():
                continue
            line = _decode(raw)
            if line is None:
                yield Document(None, where)
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{where}: not valid JSON ({err.msg}); each line must be an object with a "
                                 "string \"text\" field") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise InputError(f"{where}: expected an object with a string \"text\" field")
            try:
                row["text"].encode("utf-8")  # a JSON-escaped lone surrogate is valid JSON, not valid text
            except UnicodeEncodeError:
                yield Document(None, where)
                continue
            yield Document(row["text"], where)


def _column_documents(batches, path: str) -> Iterator[Document]:
    row = 0
    for batch in batches:
        if "text" not in batch.schema.names:
            raise InputError(f"{path}: no \"text\" column (columns: {', '.join(batch.schema.names)})")
        for text in batch.column("text").to_pylist():
            if not isinstance(text, str):
                raise InputError(f"{path} (row {row}): \"text\" must be a string, got {type(text).__name__}")
            yield Document(text, f"{path} (row {row})")
            row += 1


def documents(piece: Piece) -> Iterator[Document]:
    """The documents of one piece, in order."""
    if piece.kind == "jsonl":
        yield from _jsonl_documents(piece)
    elif piece.kind == "parquet":
        import pyarrow.parquet as pq

        groups = list(range(piece.start, piece.stop))
        batches = pq.ParquetFile(piece.paths[0]).iter_batches(row_groups=groups, columns=None)
        yield from _column_documents(batches, piece.paths[0])
    elif piece.kind == "arrow":
        import pyarrow as pa

        with pa.memory_map(piece.paths[0]) as source:
            yield from _column_documents(pa.ipc.open_stream(source), piece.paths[0])
    else:
        for path in piece.paths:
            yield Document(_decode(Path(path).read_bytes()), path)
