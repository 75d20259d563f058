"""The token store at scale: `kdh prepare` against the tokenizer alone, and a distillation run's
memory as its corpus grows from 10M to 500M tokens.

    python bench/store_scale.py --out docs/bench/store-scale.json                 # ~35 min on 2 cores
    python bench/store_scale.py --sizes 10 50 --label quick --out /tmp/s.json      # a quicker look

Nothing is downloaded. The tokenizer is the GPT-2 one in tests/fixtures/tokenizers/gpt2 (50,257
ids: 2 bytes a token); the corpus is generated here, seeded, streamed to JSON Lines files of about
5M tokens each, in two domains: ``code`` (slices of the CPython standard library's sources) and
``prose`` (sentences of words drawn with those sources' word frequencies). A corpus of N million
tokens is the first files of each domain up to N/2 million tokens each, so the sizes share files
and only the largest is written.

Measured, each step in a fresh child process:

- **prepare**: `distiller.prepare.prepare` on the 50M corpus (all cores, a fresh store) against the
  tokenizer's own `encode_batch_fast` over the same texts already in memory, in batches of 1,000,
  with all cores (its Rust threads). Both count the same tokens (one end-of-text a document).
- **distill**: for each size, the store prepared once, then `distiller.trainer.distill` for
  ``--steps`` steps (random-initialised GPT-2-shaped teacher 4 × 128 and student 2 × 64 around
  the GPT-2 tokenizer, batch 8 × 128 tokens, DDK every 10 steps): the process's peak resident
  memory (VmHWM), and its resident memory once the models and the data are set up.

``--label`` names a set of distill measurements (e.g. before/after a change); the JSON keeps every
label it was run with, so the report can set them side by side.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPT2 = ROOT / "tests" / "fixtures" / "tokenizers" / "gpt2"
STDLIB = Path(os.__file__).resolve().parent
DOMAINS = ("code", "prose")
FILE_TOKENS = 5_000_000  # tokens per generated file
CHARS_PER_TOKEN = {"code": 2.06, "prose": 4.49}  # GPT-2 on these generators, measured by --probe; sizes files


# ---- the corpus ----

def _word_model(sources: list[str]) -> tuple[list[str], list[float]]:
    counts = Counter(w.lower() for s in sources for w in re.findall(r"[A-Za-z]{2,12}", s))
    words = [w for w, _ in counts.most_common(20000)]
    return words, list(itertools.accumulate(counts[w] for w in words))  # cumulative: one bisect a draw


def _documents(domain: str, seed: str, sources: list[str], words, cum_weights):
    """An endless seeded stream of documents of a few hundred tokens."""
    rng = random.Random(f"{domain}:{seed}")
    while True:
        n = int(min(8000, max(200, rng.lognormvariate(7.0, 0.6))))  # characters; median ~1,100
        if domain == "code":
            s = sources[rng.randrange(len(sources))]
            n = min(n, len(s) - 1)
            i = rng.randrange(0, len(s) - n)
            yield s[i:i + n]
        else:
            drawn = rng.choices(words, cum_weights=cum_weights, k=max(8, n // 6))
            out, i = [], 0
            while i < len(drawn):
                k = rng.randint(6, 22)
                out.append(" ".join([drawn[i].capitalize(), *drawn[i + 1:i + k]]) + rng.choice(".,.?."))
                i += k
            yield " ".join(out)


def write_corpus(folder: Path, total_tokens: int, seed: int = 0) -> dict[str, list[Path]]:
    """{domain: files} of about ``total_tokens`` tokens over both domains, plus a validation file
    each; written once (a file that is there is kept)."""
    sources = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(STDLIB.rglob("*.py"))
               if "site-packages" not in p.parts]
    sources = [s for s in sources if len(s) > 4000]
    words, cum_weights = _word_model(sources)
    files = {}
    n_files = max(1, round(total_tokens / len(DOMAINS) / FILE_TOKENS))
    for domain in DOMAINS:
        names = ["validation.jsonl"] + [f"train-{i:03d}.jsonl" for i in range(n_files)]
        files[domain] = [folder / domain / name for name in names]
        for path in files[domain]:
            budget = (FILE_TOKENS // 50 if path.name == "validation.jsonl" else FILE_TOKENS) * CHARS_PER_TOKEN[domain]
            if path.is_file():
                continue
            docs = _documents(domain, f"{seed}:{path.name}", sources, words, cum_weights)  # each file its own seed
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp, chars = path.with_suffix(".tmp"), 0
            with open(tmp, "w") as fh:
                while chars < budget:
                    text = next(docs)
                    fh.write(json.dumps({"text": text}) + "\n")
                    chars += len(text)
            os.replace(tmp, path)
    return files


def corpora_of(files: dict[str, list[Path]], millions: int) -> dict:
    per_domain = max(1, round(millions * 1e6 / len(DOMAINS) / FILE_TOKENS))
    return {d: {"train": paths[1:1 + per_domain], "validation": paths[:1]} for d, paths in files.items()}


# ---- the steps, each in a child process ----

def _vm(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # MiB
    return 0.0


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(GPT2)


def step_prepare(spec: dict) -> dict:
    from distiller.prepare import prepare

    started = time.perf_counter()
    prepared = prepare(spec["corpora"], _tokenizer(), Path(spec["out"]), progress_stream=sys.stderr)
    seconds = time.perf_counter() - started
    tokens = sum(e[s]["tokens"] for e in prepared.manifest["domains"].values() for s in e)
    import resource

    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds, "up_to_date": prepared.up_to_date,
            "pool_tokens_per_s": prepared.tokens_per_s, "parent_peak_mib": _vm("VmHWM"),
            "largest_worker_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "store_bytes": sum(p.stat().st_size for p in Path(spec["out"]).rglob("*") if p.is_file())}


def step_encode(spec: dict) -> dict:
    """The tokenizer alone: every text in memory first, then batched encode on all cores."""
    tokenizer = _tokenizer().backend_tokenizer
    texts = [json.loads(line)["text"] for paths in spec["corpora"].values() for split in ("train", "validation")
             for path in paths[split] for line in open(path)]
    started, tokens = time.perf_counter(), 0
    for i in range(0, len(texts), 1000):
        tokens += sum(len(e.ids) + 1 for e in tokenizer.encode_batch_fast(texts[i:i + 1000], add_special_tokens=False))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds, "documents": len(texts)}


def step_models(spec: dict) -> dict:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _tokenizer()
    for name, (layers, width, seed) in {"teacher": (4, 128, 1), "student": (2, 64, 2)}.items():
        torch.manual_seed(seed)
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=width, n_layer=layers, n_head=2,
                            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
        GPT2LMHeadModel(config).save_pretrained(Path(spec["dir"]) / name)
        tokenizer.save_pretrained(Path(spec["dir"]) / name)
    return {"vocab": len(tokenizer)}


def step_distill(spec: dict) -> dict:
    from distiller.config import DistillConfig
    from distiller.store import TokenStore
    from distiller.trainer import distill

    store = TokenStore(Path(spec["store"]))
    config = DistillConfig(teacher=spec["teacher"], student=spec["student"], output_dir=spec["output"],
                           steps=spec["steps"], batch_size=8, block_size=128, interval=10, val_blocks=8,
                           save_every=spec["steps"], progress=False)
    started = time.perf_counter()
    result = distill(config, store)
    tokens = sum(e["train"]["tokens"] for e in store.manifest["domains"].values())
    return {"corpus_tokens": tokens, "rows": tokens // 129, "peak_mib": _vm("VmHWM"), "end_mib": _vm("VmRSS"),
            "seconds": time.perf_counter() - started, "tokens_per_s": result.tokens_per_s,
            "setup_seconds": result.setup_seconds}


STEPS = {"prepare": step_prepare, "encode": step_encode, "models": step_models, "distill": step_distill}


def child(spec: dict, work: Path) -> dict:
    result = work / f"result-{time.time_ns()}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run([sys.executable, __file__, "--_child", json.dumps({**spec, "_result": str(result)})],
                   cwd=ROOT, env=env, check=True)
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10, 50, 200, 500],
                        help="corpus sizes for the distillation runs, millions of tokens (none: skip them)")
    parser.add_argument("--throughput-size", type=int, default=50, help="the corpus prepare is timed on (millions)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--label", default="main")
    parser.add_argument("--work", default="/tmp/kdh-store-scale")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "store-scale.json"))
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        spec = json.loads(args._child)
        Path(spec["_result"]).write_text(json.dumps(STEPS[spec["step"]](spec)))
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_start": os.getloadavg()}
    started = time.perf_counter()
    files = write_corpus(work / "corpus", max([*args.sizes, args.throughput_size]) * 1_000_000)
    print(f"[store-scale] corpus ready in {time.perf_counter() - started:.0f} s", flush=True)
    as_str = lambda c: {d: {s: list(map(str, p)) for s, p in splits.items()} for d, splits in c.items()}  # noqa: E731

    if not args.skip_throughput:
        corpora = as_str(corpora_of(files, args.throughput_size))
        shutil.rmtree(work / "throughput-store", ignore_errors=True)
        encode = child({"step": "encode", "corpora": corpora}, work)
        prepared = child({"step": "prepare", "corpora": corpora, "out": str(work / "throughput-store")}, work)
        results["throughput"] = {"millions": args.throughput_size, "encode": encode, "prepare": prepared,
                                 "ratio": prepared["tokens_per_s"] / encode["tokens_per_s"],
                                 "pool_ratio": prepared["pool_tokens_per_s"] / encode["tokens_per_s"]}
        print(f"[store-scale] prepare {prepared['tokens_per_s'] / 1e6:.2f}M tok/s vs the tokenizer alone "
              f"{encode['tokens_per_s'] / 1e6:.2f}M: {results['throughput']['ratio']:.2f}×", flush=True)

    if not args.sizes:
        out.write_text(json.dumps(results, indent=1) + "\n")
        return
    if not (work / "models" / "student").is_dir():
        child({"step": "models", "dir": str(work / "models")}, work)
    runs = {}
    for millions in args.sizes:
        store = work / "stores" / f"{millions}M"
        prepared = child({"step": "prepare", "corpora": as_str(corpora_of(files, millions)), "out": str(store)}, work)
        shutil.rmtree(work / "run", ignore_errors=True)
        run = child({"step": "distill", "store": str(store), "teacher": str(work / "models" / "teacher"),
                     "student": str(work / "models" / "student"), "output": str(work / "run"), "steps": args.steps}, work)
        runs[str(millions)] = {**run, "prepare_seconds": prepared["seconds"]}
        print(f"[store-scale] {millions}M: {run['corpus_tokens'] / 1e6:.0f}M tokens, peak {run['peak_mib']:.0f} MiB",
              flush=True)
    peaks = [r["peak_mib"] for r in runs.values()]
    results.setdefault("distill", {})[args.label] = {"runs": runs, "steps": args.steps,
                                                      "peak_spread": max(peaks) / min(peaks) - 1}
    results["machine"]["loadavg_end"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"[store-scale] peak spread {results['distill'][args.label]['peak_spread']:+.1%}; wrote {out}")


if __name__ == "__main__":
    main()
