"""`kdh classify` against the issue's three marks, on the demo world at its default size.

(a) accuracy: trained on half of each domain's training documents, tested on the other half; the
    confusion matrix of that half;
(b) throughput: ≥ 50,000 documents of ~1 KB (cut from the demo domains' text) labelled by
    ``label_corpus`` on ``--workers`` processes, end to end (reading, features, the model, writing);
(c) mixture: the domains' training documents mixed, shuffled and unlabelled, classified, prepared
    (`kdh prepare --classified`) and distilled (`kdh distill`, DDK) against the same run on the
    labelled corpus: the final DDK weight of each domain within 2 points.

Writes docs/bench/classify.json.

    python bench/classify.py                       # ~5 min on 2 cores once the demo world is built
    python bench/classify.py --steps 100 --docs 50000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOMAINS = ("arithmetic", "code", "prose", "records")


def accuracy(world, holdout: float) -> tuple[dict, object]:
    from harness.classify import confusion_table, read_labelled, train

    examples = read_labelled({d: [world.domain_file(d, "train.jsonl")] for d in DOMAINS})
    started = time.process_time()
    trained = train(examples, holdout=holdout)
    print(f"(a) held-out accuracy {trained.accuracy:.4f}, fit {trained.seconds:.2f} s", flush=True)
    return {"accuracy": trained.accuracy, "holdout": holdout, "fit_seconds": trained.seconds,
            "train_cpu_seconds": time.process_time() - started,
            "documents": {r.domain: {"train": int(r.train), "held_out": int(r.held_out)} for r in trained.counts.itertuples()},
            "confusion": confusion_table(trained.confusion).to_dict(orient="records")}, trained.classifier


def kilobyte_documents(world, n: int, size: int = 1024) -> list[str]:
    """``n`` documents of ~``size`` bytes: each domain's text run together and cut, cycled."""
    docs = []
    for domain in DOMAINS:
        text = "\n\n".join(json.loads(line)["text"] for line in world.domain_file(domain, "train.jsonl").open())
        docs.append([text[i:i + size] for i in range(0, len(text) - size, size)])
    return [docs[i % len(DOMAINS)][(i // len(DOMAINS)) % len(docs[i % len(DOMAINS)])] for i in range(n)]


def throughput(world, classifier, n: int, workers: int, folder: Path) -> dict:
    from harness.classify_corpus import label_corpus

    texts = kilobyte_documents(world, n)
    corpus = folder / "kilobyte.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    load = os.getloadavg()[0]
    labelled = label_corpus(classifier, [corpus], folder / "labelled", threshold=0.5, workers=workers)
    cpu_seconds = labelled.cpu_seconds  # the workers' CPU time on the pieces: reading, features, model, writing
    # The model alone, one core, no I/O: what a worker does per document.
    sample = texts[:10_000]
    cpu = time.process_time()
    classifier.label(sample, 0.5)
    per_core = len(sample) / (time.process_time() - cpu)
    print(f"(b) {labelled.documents_per_s:,.0f} documents/s end to end on {workers} workers "
          f"({len(texts) / cpu_seconds:,.0f} per CPU-second); {per_core:,.0f}/s per core (model alone); "
          f"load average {load:.1f}", flush=True)
    return {"documents": len(texts), "mean_bytes": sum(len(t.encode()) for t in texts) / len(texts),
            "workers": workers, "seconds": labelled.seconds, "documents_per_s": labelled.documents_per_s,
            "model_documents_per_s_per_core": per_core, "cpu_seconds": cpu_seconds,
            "documents_per_cpu_second": len(texts) / cpu_seconds, "load_average_at_start": load,
            "cpu_count": os.cpu_count()}


def mixture(world, steps: int, interval: int, folder: Path, holdout: float) -> dict:
    from harness.cli import main

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    rows = [line for d in DOMAINS for line in world.domain_file(d, "train.jsonl").read_text().splitlines() if line.strip()]
    random.Random(0).shuffle(rows)
    mixed = folder / "mixed.jsonl"
    mixed.write_text("".join(json.dumps({"text": json.loads(r)["text"]}) + "\n" for r in rows))
    assert main(["classify", "--input", str(mixed), "--out", str(folder / "classified"), "--holdout", str(holdout),
                 "--tracking-uri", uri]) == 0
    summary = json.loads((folder / "classified" / "classification.json").read_text())
    stores = {"labelled": folder / "store-labelled", "classified": folder / "store-classified"}
    assert main(["prepare", "--out", str(stores["labelled"]), "--tracking-uri", uri]) in (0, 1)
    assert main(["prepare", "--classified", str(folder / "classified"), "--out", str(stores["classified"]),
                 "--tracking-uri", uri]) in (0, 1)  # 1: the contamination check; the same corpus text either way
    weights, tags = {}, {}
    for name, store in stores.items():
        started = time.perf_counter()
        assert main(["distill", "--store", str(store), "--steps", str(steps), "--interval", str(interval),
                     "--out", str(folder / f"distill-{name}"), "--tracking-uri", uri]) == 0
        weights[name], tags[name] = newest_weights(uri)
        print(f"(c) {name}: final DDK weights {weights[name]} ({time.perf_counter() - started:.0f} s)", flush=True)
    gaps = {d: abs(weights["classified"][d] - weights["labelled"][d]) for d in DOMAINS}
    return {"steps": steps, "interval": interval, "documents": len(rows), "counts": summary["counts"],
            "weights": weights, "max_gap_points": 100 * max(gaps.values()),
            "gap_points": {d: 100 * g for d, g in gaps.items()}, "classifier_tag": tags["classified"],
            "classifier": summary["classifier"]["fingerprint"]}


def newest_weights(uri: str) -> tuple[dict[str, float], str | None]:
    """The last DDK weights of the newest distill run, and its classifier tag."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["kdh/default"], output_format="list", max_results=1,
                             filter_string="tags.`kdh.kind` = 'distill'", order_by=["attributes.start_time DESC"])[0]
    history = mlflow.MlflowClient().load_table(run.info.experiment_id, "tables/ddk_history.json",
                                               run_ids=[run.info.run_id])
    return {d: float(history[f"weight/{d}"].iloc[-1]) for d in DOMAINS}, run.data.tags.get("kdh.classifier")


class DataFolder:
    """A demo world's data folder alone (``<domain>/<file>``), for the parts that need no model."""

    def __init__(self, root: Path):
        self.root = root

    def domain_file(self, domain: str, name: str) -> Path:
        return self.root / domain / name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--interval", type=int, default=20)
    parser.add_argument("--only", nargs="*", choices=["accuracy", "throughput", "mixture"])
    parser.add_argument("--size", default="default", choices=["default", "tiny"], help="the demo world's size")
    parser.add_argument("--mixture-size", choices=["default", "tiny"],
                        help="the world of (c) alone (default: --size): its runs are the slow part")
    parser.add_argument("--data", help="(a) and (b) from this demo world's data folder (its models are not needed; "
                                       "default: the world's own, built first)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "classify.json"))
    args = parser.parse_args()

    from harness.demo import ensure_world
    from harness.home import configure_environment, kdh_home

    configure_environment()
    parts = set(args.only or ["accuracy", "throughput", "mixture"])
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="kdh-bench-classify-") as tmp:
        if parts & {"accuracy", "throughput"}:
            world = DataFolder(Path(args.data)) if args.data else ensure_world(kdh_home(), size=args.size)
            results["accuracy"], classifier = accuracy(world, 0.5)
            results["accuracy"]["world"] = args.size
        if "throughput" in parts:
            results["throughput"] = throughput(world, classifier, args.docs, args.workers, Path(tmp))
        if "mixture" in parts:
            size = args.mixture_size or args.size
            os.environ["KDH_DEMO_SIZE"] = size  # the suite's demo:// corpora and models are this world's
            results["mixture"] = mixture(ensure_world(kdh_home(), size=size), args.steps, args.interval, Path(tmp), 0.5)
            results["mixture"]["world"] = size
    results["machine"] = {"cpu_count": os.cpu_count(), "measured": time.strftime("%Y-%m-%d %H:%M")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
