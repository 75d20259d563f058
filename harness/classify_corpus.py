"""Unlabelled corpora → one JSON Lines file per domain, labelled by a classifier (docs/classify.md).

The inputs are read as `kdh prepare` reads a corpus (distiller/corpus.py: JSON Lines, Parquet, text
folders, saved datasets) and cut into the same pieces. A pool of worker processes labels the pieces,
each into its own part files; the parent then joins the parts in piece order, so the output is the
same bytes whatever order the workers finish in. The folder appears whole or not at all:

    <domain>.jsonl        one line per document: {"text", "confidence"}; one file per suite domain
    unknown.jsonl         documents whose confidence is below the threshold
    classifier/           the classifier that labelled them (harness/classify.py)
    classification.json   the classifier's fingerprint, the threshold, counts, the inputs' sha256

`kdh prepare --classified DIR` takes the domain files as the training corpora (``read_classified``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from harness.classify import UNKNOWN, Classifier, load, save
from harness.errors import BadInput, distill_errors

SUMMARY = "classification.json"
FORMAT = "kdh-classified-corpus"
_BATCH = 2000  # documents per vectorize-and-predict call
PIECE_BYTES = 4 << 20  # input per unit of parallel work: a few hundred ms of one core


@dataclass(frozen=True)
class Labelled:
    out: Path
    summary: dict  # what classification.json holds
    seconds: float
    documents_per_s: float
    cpu_seconds: float  # the workers' CPU time on the pieces (no start-up): the cost on an idle machine


# ---- the worker: one piece → part files per bucket, and its counts ----

_WORKER: dict = {}


def _start_worker(classifier_dir: str, threshold: float) -> None:
    from harness.classify import vectorizer

    classifier = load(Path(classifier_dir))
    _WORKER.update(classifier=classifier, threshold=threshold, hashing=vectorizer(classifier.features))


def label_piece(task: tuple) -> tuple[int, dict, float]:
    """Label one piece into ``<parts>/<bucket>/<index>.jsonl``; count what went where, and the CPU
    seconds it took."""
    from distiller import corpus

    cpu = time.process_time()
    index, piece, parts = task
    classifier: Classifier = _WORKER["classifier"]
    buckets = [*classifier.classes, UNKNOWN]
    counts = dict.fromkeys([*buckets, "empty", "invalid_utf8"], 0)
    files = {b: open(Path(parts) / b / f"{index:05d}.jsonl", "w", encoding="utf-8") for b in buckets}
    batch: list[str] = []

    def flush():
        names, confidence = classifier.label(batch, _WORKER["threshold"], _WORKER["hashing"])
        for text, name, conf in zip(batch, names, confidence):
            files[name].write(json.dumps({"text": text, "confidence": round(float(conf), 4)}, ensure_ascii=False) + "\n")
            counts[name] += 1
        batch.clear()

    try:
        for doc in corpus.documents(piece):
            if doc.text is None:
                counts["invalid_utf8"] += 1  # not UTF-8: its text is not the source's, so it is not labelled
            elif not doc.text.strip():
                counts["empty"] += 1
            else:
                batch.append(doc.text)
                if len(batch) == _BATCH:
                    flush()
        if batch:
            flush()
    finally:
        for fh in files.values():
            fh.close()
    return index, counts, time.process_time() - cpu


# ---- the parent ----

def _label_pieces(todo: list, classifier_dir: Path, threshold: float, workers: int, progress_stream) -> dict:
    """Each piece's counts, labelled by ``workers`` processes (in this one when one suffices)."""
    from tqdm.auto import tqdm

    sizes = {task[0]: task[1].size for task in todo}
    bar = tqdm(total=sum(sizes.values()), unit="B", unit_scale=True, desc="classifying", file=progress_stream,
               mininterval=1.0)
    results: dict[int, dict] = {}
    started, documents = time.perf_counter(), 0

    def done(index: int, counts: dict, cpu: float) -> None:
        nonlocal documents
        results[index] = {**counts, "cpu_seconds": cpu}
        documents += sum(v for k, v in counts.items() if k not in ("empty", "invalid_utf8"))
        bar.update(sizes[index])
        bar.set_postfix_str(f"{documents / (time.perf_counter() - started):,.0f} docs/s", refresh=False)

    workers = max(1, min(workers, len(todo)))
    if workers == 1:
        _start_worker(str(classifier_dir), threshold)
        for task in todo:
            done(*label_piece(task))
    else:
        # Not a fork of this process (it may run threads: MLflow's, torch's; a fork of those can
        # deadlock), but forks of a clean server that imported the libraries once: each worker then
        # starts in milliseconds instead of paying scikit-learn's ~2 s import itself.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["harness.classify_corpus", "sklearn.feature_extraction.text"])
        # Largest pieces first, so no core waits long on another's big piece at the end.
        todo = sorted(todo, key=lambda task: -task[1].size)
        with context.Pool(workers, _start_worker, (str(classifier_dir), threshold)) as pool:
            for result in pool.imap_unordered(label_piece, todo):
                done(*result)
    bar.close()
    return results


def _smaller(piece, size: int) -> list:
    """A JSON Lines piece cut into pieces of about ``size`` bytes, each ending at a line break: the
    store's 16 MB pieces (distiller/corpus.py) leave cores idle at the end of a 50 MB input, and
    labelling, unlike tokenizing, keeps nothing per piece that makes small pieces cost more."""
    if piece.kind != "jsonl" or piece.size <= size:
        return [piece]
    from dataclasses import replace

    out, start = [], piece.start
    with open(piece.paths[0], "rb") as fh:
        while start < piece.stop:
            fh.seek(min(start + size, piece.stop))
            fh.readline()
            stop = min(fh.tell(), piece.stop)
            out.append(replace(piece, start=start, stop=stop, size=stop - start))
            start = stop
    return out


def label_corpus(classifier: Classifier, inputs: list[Path], out: Path, *, threshold: float = 0.5,
                 workers: int | None = None, progress_stream=None) -> Labelled:
    """Label every document of ``inputs`` into the folder ``out`` (replaced whole when it exists)."""
    from distiller import corpus
    from distiller.files import write_atomic_folder

    if not 0 <= threshold <= 1:
        raise BadInput(f"--threshold {threshold}: a confidence threshold must be in [0, 1]")
    with distill_errors():  # a missing or unreadable input is bad input naming it
        sources = corpus.fingerprint(list(inputs))
        pieces = [small for piece in corpus.pieces(list(inputs)) for small in _smaller(piece, PIECE_BYTES)]
    buckets = [*classifier.classes, UNKNOWN]
    started = time.perf_counter()
    summary: dict = {}
    cpu_seconds = []

    def fill(tmp: Path) -> None:
        parts = tmp / ".parts"
        for bucket in buckets:
            (parts / bucket).mkdir(parents=True)
        save(classifier, tmp / "classifier")
        todo = [(i, piece, str(parts)) for i, piece in enumerate(pieces)]
        with distill_errors():
            counts = _label_pieces(todo, tmp / "classifier", threshold, workers or os.cpu_count() or 1, progress_stream)
        for bucket in buckets:  # the parts joined in piece order: the same bytes whatever finished first
            with open(tmp / f"{bucket}.jsonl", "wb") as joined:
                for index in range(len(pieces)):
                    with open(parts / bucket / f"{index:05d}.jsonl", "rb") as part:
                        shutil.copyfileobj(part, joined)
        shutil.rmtree(parts)
        total = {key: sum(c[key] for c in counts.values()) for key in [*buckets, "empty", "invalid_utf8"]}
        cpu_seconds.append(sum(c["cpu_seconds"] for c in counts.values()))
        labelled = sum(total[b] for b in buckets)
        summary.update({
            "format": FORMAT, "version": 1, "threshold": threshold,
            "classifier": {"fingerprint": classifier.fingerprint, "folder": "classifier",
                           "held_out_accuracy": classifier.training.get("accuracy")},
            "domains": list(classifier.classes), "files": {b: f"{b}.jsonl" for b in buckets},
            "counts": {b: total[b] for b in buckets}, "documents": labelled,
            "unknown_share": total[UNKNOWN] / labelled if labelled else 0.0,
            "skipped": {"empty": total["empty"], "invalid_utf8": total["invalid_utf8"]},
            "inputs": sources})
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")

    write_atomic_folder(Path(out), fill)
    seconds = time.perf_counter() - started
    return Labelled(Path(out), summary, seconds, summary["documents"] / max(seconds, 1e-9), cpu_seconds[0])


def read_classified(folder: Path) -> tuple[dict[str, list[Path]], dict]:
    """A `kdh classify` output folder → ({domain: [its file]}, the provenance a token store records).
    The unknown bucket is left out."""
    from distiller.files import sha256_file

    folder = Path(folder).expanduser()
    try:
        summary = json.loads((folder / SUMMARY).read_text())
    except (OSError, ValueError) as err:
        raise BadInput(f"--classified {folder}: no readable {SUMMARY} ({err}); give the --out folder of "
                       "`kdh classify`") from None
    if summary.get("format") != FORMAT:
        raise BadInput(f"{folder / SUMMARY}: format {summary.get('format')!r}, expected {FORMAT!r}")
    corpora = {d: [folder / summary["files"][d]] for d in summary["domains"]}
    provenance = {"classifier": summary["classifier"]["fingerprint"], "classification": sha256_file(folder / SUMMARY),
                  "threshold": summary["threshold"], "unknown_documents": summary["counts"][UNKNOWN]}
    return corpora, provenance
