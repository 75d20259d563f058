"""Token stores: datatrove vs litdata vs plain numpy shards, measured on one tokenized corpus.

    python bench/store_libraries.py --tokens 20000000 --out docs/bench/store-libraries.json
    python bench/store_libraries.py --tokens 2000000 --methods numpy-1proc numpy-pool2 --no-kill   # quick look

Run it in a venv that has torch (the CPU build), numpy, tokenizers, transformers and psutil, plus
`datatrove` (and `orjson`, which its JsonlReader needs) and `litdata`; a library that is not importable
is skipped and the JSON says so. Nothing is downloaded: the tokenizer is the GPT-2 one under
shared/fixtures/tokenizers/gpt2 and the corpus is generated here, seeded, as JSON Lines of
{"id", "text"} documents (half slices of CPython standard-library source, half English-like prose drawn
from the words of that source; a few hundred tokens per document).

Four ways to turn the JSONL corpus into memory-mappable token shards (one EOS appended per document):
  numpy-1proc  one process, `Tokenizer.encode_batch_fast` over 1000-document batches (rayon, all cores),
               one uint16 token file + one uint32 document-end file per input file, written to a
               temporary name and renamed; a rerun skips the shards that exist.
  numpy-pool2  the same layout, tokenized by a 2-process spawn pool over 1000-document pieces (one rayon
               thread each), written in input order by the parent.
  datatrove    JsonlReader + DocumentTokenizer (its defaults: encode_batch, document shuffle with seed 42)
               under LocalPipelineExecutor(tasks=2, workers=2).
  datatrove-b1000  the same with batch_size=1000 (preparation at the main size only).
  litdata      litdata.optimize over 1000-document pieces (the function returns the piece's tokens),
               item_loader=TokensLoader(), num_workers=2, use_checkpoint=True, chunk_bytes=64MB.

Measured for each: (a) preparation tokens/s against the tokenizer's own encode_batch_fast on the same
texts already in memory (2 rayon threads), as the best of `--repeats` (tokenizer alone, store) pairs run
back to back at the main size, plus the same ratio in tokens per CPU-second, (b) bytes on disk per token (all files),
(c) peak RSS of the preparation process tree (sum over the tree, sampled every 0.1 s) and of a reader
process that draws 2,000 random 1025-token blocks, at several corpus sizes, (d) time per random block,
page cache cold (posix_fadvise DONTNEED on the store's files) and warm, (e) a SIGKILL of the whole
process group at half the clean run's wall time, a rerun in the same folder, and sha256 of every output
file against a clean run (and a second clean run, for determinism), (f) how rows are split over ranks
(litdata: its own assignment, simulated with two `_DistributedEnv`s), (g) install footprint: the
distributions that each library adds to a torch+numpy+tokenizers+transformers+psutil environment and
their installed size (from the installed RECORD files); also two runs each of datatrove's seed=None and
litdata's unordered, checkpoint-less defaults on a 1M-token corpus.

Every step runs in a child process of this script (`--_worker`), so RSS and timing are per step.
The machine's load average is recorded at the start and the end; on a shared machine, expect noise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = ROOT / "shared" / "fixtures" / "tokenizers" / "gpt2"
if not TOKENIZER_DIR.exists():  # a worktree of the project keeps shared/ one level up
    TOKENIZER_DIR = ROOT.parent / "shared" / "fixtures" / "tokenizers" / "gpt2"
STDLIB = Path(os.__file__).resolve().parent
BLOCK = 1025
EOS = 50256
N_FILES = 8
PIECE_DOCS = 1000
READS = 2000
METHOD_SPECS = {  # name: (library path in w_prep, options)
    "numpy-1proc": ("numpy-1proc", {}),
    "numpy-pool2": ("numpy-pool2", {}),
    "datatrove": ("datatrove", {}),
    "datatrove-b1000": ("datatrove", {"batch_size": 1000}),
    "litdata": ("litdata", {}),
}
METHODS = tuple(METHOD_SPECS)
READERS = {
    "numpy-1proc": ("pread", "memmap", "fromfile"),
    "numpy-pool2": (),  # same bytes as numpy-1proc (checked by sha256), so same readers
    "datatrove": ("datatrove",),
    "datatrove-b1000": (),
    "litdata": ("litdata",),
}
MIB = 1024 * 1024


# --------------------------------------------------------------------------- helpers shared by workers


def _tok():
    """The GPT-2 tokenizer's Rust backend, from the tokenizer.json that the setup step wrote."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from tokenizers import Tokenizer

        _TOKENIZER = Tokenizer.from_file(os.environ["KDH_STORE_TOKENIZER"])
    return _TOKENIZER


_TOKENIZER = None


def _encode(texts: list[str]):
    """Token ids of the texts, one EOS after each, as uint16; and the per-document lengths."""
    import numpy as np

    encs = _tok().encode_batch_fast(texts)
    buf: list[int] = []
    lens = []
    for e in encs:
        ids = e.ids
        buf.extend(ids)
        buf.append(EOS)
        lens.append(len(ids) + 1)
    return np.array(buf, dtype=np.uint16), np.array(lens, dtype=np.int64)


def _read_piece(piece) -> list[str]:
    path, start, end = piece[0], piece[1], piece[2]
    with open(path, "rb") as f:
        f.seek(start)
        raw = f.read(end - start)
    return [json.loads(line)["text"] for line in raw.splitlines() if line]


def _pieces(corpus: Path) -> list[tuple[str, int, int, int]]:
    """(file, byte start, byte end, file index) for every run of PIECE_DOCS lines, in input order."""
    out = []
    for fi, path in enumerate(sorted(corpus.glob("*.jsonl"))):
        offsets = [0]
        with open(path, "rb") as f:
            for line in f:
                offsets.append(offsets[-1] + len(line))
        for i in range(0, len(offsets) - 1, PIECE_DOCS):
            out.append((str(path), offsets[i], offsets[min(i + PIECE_DOCS, len(offsets) - 1)], fi))
    return out


def _rss_status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(line.split()[1]) / 1024  # kB -> MiB
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def _tree(folder: Path) -> dict[str, dict]:
    return {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- workers


def w_setup(spec: dict) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    backend = tok.backend_tokenizer
    Path(spec["tokenizer_json"]).write_text(backend.to_str())
    return {"vocab_size": backend.get_vocab_size(), "eos": backend.token_to_id("<|endoftext|>")}


def w_corpus(spec: dict) -> dict:
    """Seeded corpus of about spec['tokens'] tokens (text + one EOS per document) in N_FILES JSONL files."""
    import random
    import re
    from collections import Counter

    import numpy as np

    rng = random.Random(spec["seed"])
    nrng = np.random.default_rng(spec["seed"])
    files = sorted(p for p in STDLIB.rglob("*.py") if "site-packages" not in p.parts)
    sources = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    sources = [s for s in sources if len(s) > 4000]
    counts = Counter(w.lower() for s in sources for w in re.findall(r"[A-Za-z]{2,12}", s))
    vocab = [w for w, _ in counts.most_common(20000)]
    weights = np.array([counts[w] for w in vocab], dtype=np.float64)
    weights /= weights.sum()

    def doc() -> str:
        n = int(min(8000, max(200, rng.lognormvariate(7.0, 0.6))))  # chars; median ~1100
        if rng.random() < 0.5:
            s = rng.choice(sources)
            n = min(n, len(s) - 1)
            i = rng.randrange(0, len(s) - n)
            return s[i:i + n]
        words = nrng.choice(vocab, size=max(8, n // 6), p=weights).tolist()
        out, i = [], 0
        while i < len(words):
            k = rng.randint(6, 22)
            sent = words[i:i + k]
            out.append(" ".join([sent[0].capitalize()] + sent[1:]) + rng.choice([".", ".", ".", "?", ","]))
            i += k
        return " ".join(out)

    probe = [doc() for _ in range(2000)]
    per_doc = sum(len(e.ids) + 1 for e in _tok().encode_batch_fast(probe)) / len(probe)
    n_docs = int(spec["tokens"] / per_doc)
    docs = probe[:n_docs] + [doc() for _ in range(max(0, n_docs - len(probe)))]
    out = Path(spec["dir"])
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for fi in range(N_FILES):
        lo, hi = fi * n_docs // N_FILES, (fi + 1) * n_docs // N_FILES
        with open(tmp / f"part-{fi:02d}.jsonl", "w") as f:
            for i in range(lo, hi):
                f.write(json.dumps({"id": f"d{i}", "text": docs[i]}) + "\n")
    os.replace(tmp, out)
    return {"docs": n_docs, "estimated_tokens_per_doc": per_doc,
            "bytes": sum(p.stat().st_size for p in out.glob("*.jsonl"))}


def w_baseline(spec: dict) -> dict:
    """The tokenizer alone: encode_batch_fast / encode_batch over 1000-text batches already in memory."""
    corpus = Path(spec["corpus"])
    texts = []
    for path in sorted(corpus.glob("*.jsonl")):
        with open(path) as f:
            texts.extend(json.loads(line)["text"] for line in f)
    tok = _tok()
    out = {"docs": len(texts), "rayon_threads": os.environ.get("RAYON_NUM_THREADS", "default")}
    for name in spec["fns"]:
        fn = getattr(tok, name)
        t0, c0 = time.perf_counter(), time.process_time()
        n = 0
        for i in range(0, len(texts), PIECE_DOCS):
            n += sum(len(e.ids) + 1 for e in fn(texts[i:i + PIECE_DOCS]))
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        out[name] = {"seconds": dt, "cpu_seconds": dc, "tokens": n, "tokens_per_s": n / dt,
                     "tokens_per_cpu_s": n / dc}
    return out


def _np_write_shard(out: Path, fi: int, parts) -> dict:
    """Write one shard (tokens .bin, uint32 document ends .idx) under temporary names, then rename."""
    import numpy as np

    stem = out / f"shard-{fi:05d}"
    ntok = 0
    ends: list = []
    with open(f"{stem}.bin.tmp", "wb") as fb:
        for tokens, lens in parts:
            fb.write(tokens.tobytes())
            ends.append(ntok + np.cumsum(lens))
            ntok += len(tokens)
        fb.flush()
        os.fsync(fb.fileno())
    idx = np.concatenate(ends).astype(np.uint32) if ends else np.zeros(0, np.uint32)
    assert ntok < 2**32
    with open(f"{stem}.idx.tmp", "wb") as fi_:
        fi_.write(idx.tobytes())
        fi_.flush()
        os.fsync(fi_.fileno())
    os.replace(f"{stem}.idx.tmp", f"{stem}.idx")
    os.replace(f"{stem}.bin.tmp", f"{stem}.bin")  # the .bin's presence marks the shard complete
    return {"tokens": ntok, "docs": int(len(idx))}


def _np_manifest(out: Path, n_files: int) -> dict:
    import numpy as np

    shards = []
    for fi in range(n_files):
        stem = out / f"shard-{fi:05d}"
        shards.append({"name": stem.name, "tokens": os.path.getsize(f"{stem}.bin") // 2,
                       "docs": os.path.getsize(f"{stem}.idx") // 4, "sha256": _sha256(Path(f"{stem}.bin")),
                       "idx_sha256": _sha256(Path(f"{stem}.idx"))})
    manifest = {"format": "uint16 tokens + uint32 doc ends", "eos": EOS, "shards": shards}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    del np
    return {"tokens": sum(s["tokens"] for s in shards), "docs": sum(s["docs"] for s in shards)}


def _np_init() -> None:
    os.environ["RAYON_NUM_THREADS"] = "1"  # 2 processes x 1 thread on 2 cores
    _tok()


def _np_piece(piece):
    return _encode(_read_piece(piece))


def w_prep(spec: dict) -> dict:
    method, corpus, out = spec["method"], Path(spec["corpus"]), Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    extra: dict = {}
    if method in ("numpy-1proc", "numpy-pool2"):
        pieces = _pieces(corpus)
        n_files = max(p[3] for p in pieces) + 1
        todo = [p for p in pieces if not (out / f"shard-{p[3]:05d}.bin").exists()]
        extra["shards_skipped"] = n_files - len({p[3] for p in todo})
        by_file: dict[int, list] = {}
        for p in todo:
            by_file.setdefault(p[3], []).append(p)
        if method == "numpy-1proc":
            for fi, ps in by_file.items():
                _np_write_shard(out, fi, (_np_piece(p) for p in ps))
        else:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(2, initializer=_np_init) as pool:
                results = pool.imap(_np_piece, todo, chunksize=1)
                for fi, ps in by_file.items():
                    _np_write_shard(out, fi, (next(results) for _ in ps))
        counts = _np_manifest(out, n_files)
    elif method == "datatrove":
        from datatrove.executor import LocalPipelineExecutor
        from datatrove.pipeline.readers import JsonlReader
        from datatrove.pipeline.tokens import DocumentTokenizer

        os.environ["RAYON_NUM_THREADS"] = "1"  # inherited by the 2 task processes
        logs = Path(spec["logs"])
        executor = LocalPipelineExecutor(
            pipeline=[
                JsonlReader(str(corpus), glob_pattern="*.jsonl", text_key="text", id_key="id"),
                DocumentTokenizer(output_folder=str(out), tokenizer_name_or_path=os.environ["KDH_STORE_TOKENIZER"],
                                  eos_token="<|endoftext|>", seed=spec.get("seed", 42),
                                  batch_size=spec.get("batch_size", 10000),
                                  shuffle_documents=spec.get("shuffle", True)),
            ],
            tasks=2, workers=2, logging_dir=str(logs))
        extra["completions_before"] = len(list((logs / "completions").glob("*"))) if (logs / "completions").exists() else 0
        executor.run()
        ds = sum(p.stat().st_size for p in out.rglob("*.ds"))
        idx = sum(p.stat().st_size for p in out.rglob("*.ds.index"))
        counts = {"tokens": ds // 2, "docs": idx // 8}
    elif method == "litdata":
        from litdata import optimize
        from litdata.streaming.item_loader import TokensLoader

        os.environ["RAYON_NUM_THREADS"] = "1"  # inherited by the 2 spawned workers
        optimize(fn=_np_piece_tokens, inputs=[list(p[:3]) for p in _pieces(corpus)], output_dir=str(out),
                 num_workers=2, chunk_bytes="64MB", item_loader=TokensLoader(), start_method="spawn",
                 use_checkpoint=spec.get("checkpoint", True), keep_data_ordered=spec.get("ordered"),
                 verbose=False)
        index = json.loads((out / "index.json").read_text())
        counts = {"tokens": sum(c["dim"] for c in index["chunks"]), "docs": None}
    else:
        raise ValueError(method)
    return {"inner_seconds": time.perf_counter() - t0, **counts, **extra}


def _np_piece_tokens(piece):
    """litdata's fn: one item = the tokens of one 1000-document piece (EOS-separated)."""
    return _encode(_read_piece(piece))[0]


def _evict_or_warm(folder: Path, cold: bool) -> None:
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        fd = os.open(p, os.O_RDONLY)
        try:
            if cold:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                while os.read(fd, 4 * MIB):
                    pass
        finally:
            os.close(fd)


def w_read(spec: dict) -> dict:
    """Open the store and draw READS random BLOCK-token blocks; time and RSS."""
    import numpy as np

    out, mode = Path(spec["out"]), spec["mode"]
    rss_python = _rss_status()["VmRSS"]
    if mode == "datatrove":
        from datatrove.utils.dataset import DatatroveFolderDataset
    elif mode == "litdata":
        from litdata import StreamingDataset
        from litdata.streaming.item_loader import TokensLoader
    _evict_or_warm(out, spec["cold"])
    rss_imports = _rss_status()["VmRSS"]
    t0 = time.perf_counter()
    if mode in ("pread", "memmap", "fromfile"):
        bins = sorted(out.glob("shard-*.bin"))
        nblocks = [os.path.getsize(b) // (2 * BLOCK) for b in bins]
        starts = np.cumsum([0] + nblocks)
        fds = [os.open(b, os.O_RDONLY) for b in bins]
        maps = [np.memmap(b, dtype=np.uint16, mode="r") for b in bins] if mode == "memmap" else None

        def get(i):
            s = int(np.searchsorted(starts, i, side="right") - 1)
            off = int(i - starts[s]) * BLOCK
            if mode == "pread":
                return np.frombuffer(os.pread(fds[s], 2 * BLOCK, 2 * off), dtype=np.uint16)
            if mode == "memmap":
                return np.array(maps[s][off:off + BLOCK])
            return np.fromfile(bins[s], dtype=np.uint16, count=BLOCK, offset=2 * off)
        total = int(starts[-1])
    elif mode == "datatrove":
        ds = DatatroveFolderDataset(str(out), seq_len=BLOCK - 1, token_size=2, shuffle=False)

        def get(i):
            return ds[int(i)]["input_ids"].numpy()
        total = len(ds)
    else:
        os.environ.setdefault("DATA_OPTIMIZER_CACHE_FOLDER", spec["cache"])
        ds = StreamingDataset(input_dir=str(out), item_loader=TokensLoader(block_size=BLOCK), shuffle=False)

        def get(i):
            x = ds[int(i)]
            return x.numpy() if hasattr(x, "numpy") else np.asarray(x)
        total = len(ds)
    open_s = time.perf_counter() - t0
    rss_open = _rss_status()["VmRSS"]
    idx = np.random.default_rng(spec["seed"]).integers(0, total, READS)
    times = np.empty(READS)
    h = hashlib.sha256()
    for k, i in enumerate(idx):
        t = time.perf_counter_ns()
        x = get(i)
        times[k] = (time.perf_counter_ns() - t) / 1e3
        assert len(x) == BLOCK, len(x)
        h.update(np.asarray(x, dtype=np.uint16).tobytes())
    st = _rss_status()
    return {"blocks_in_store": total, "open_seconds": open_s, "us_per_block_mean": float(times.mean()),
            "us_per_block_p50": float(np.percentile(times, 50)), "us_per_block_p99": float(np.percentile(times, 99)),
            "rss_python_mib": rss_python, "rss_after_imports_mib": rss_imports, "rss_after_open_mib": rss_open,
            "rss_end_mib": st["VmRSS"], "rss_peak_mib": st["VmHWM"], "rss_anon_end_mib": st["RssAnon"],
            "rss_file_end_mib": st["RssFile"], "rss_growth_while_reading_mib": st["VmRSS"] - rss_open,
            "blocks_sha256": h.hexdigest()}


def w_litdata_checks(spec: dict) -> dict:
    """litdata: how its StreamingDataset splits the blocks over 2 ranks (two simulated _DistributedEnvs),
    and whether StreamingDataLoader.state_dict resumes mid-epoch at the next batch."""
    import numpy as np
    from litdata import StreamingDataLoader, StreamingDataset
    from litdata.streaming.item_loader import TokensLoader
    from litdata.utilities.env import _DistributedEnv

    os.environ.setdefault("DATA_OPTIMIZER_CACHE_FOLDER", spec["cache"])

    def make(**kw):
        return StreamingDataset(input_dir=spec["out"], item_loader=TokensLoader(block_size=BLOCK), **kw)

    def key(x):
        return hashlib.sha1(np.asarray(x, dtype=np.uint16).tobytes()).hexdigest()

    res: dict = {"blocks_total": len(make())}
    seen = []
    for rank in (0, 1):
        ds = make(shuffle=True, seed=7, drop_last=True)
        ds.distributed_env = _DistributedEnv(world_size=2, global_rank=rank, num_nodes=1)
        keys = [key(x) for x in ds]
        seen.append(set(keys))
        res[f"rank{rank}_blocks"] = len(keys)
    res["overlap_blocks"] = len(seen[0] & seen[1])
    res["union_blocks"] = len(seen[0] | seen[1])

    def batches(loader, n):
        it = iter(loader)
        return [next(it) for _ in range(n)]
    ref = batches(StreamingDataLoader(make(shuffle=True, seed=7), batch_size=4, num_workers=0), 12)
    loader = StreamingDataLoader(make(shuffle=True, seed=7), batch_size=4, num_workers=0)
    first = batches(loader, 6)
    state = loader.state_dict()
    resumed = StreamingDataLoader(make(shuffle=True, seed=7), batch_size=4, num_workers=0)
    resumed.load_state_dict(state)
    rest = batches(resumed, 6)
    res["state_dict_resume_matches"] = all(
        key(a) == key(b) for a, b in zip([*first, *rest], ref))
    res["state_dict_keys"] = sorted(state.keys()) if isinstance(state, dict) else str(type(state))
    return res


WORKERS = {"setup": w_setup, "corpus": w_corpus, "baseline": w_baseline, "prep": w_prep, "read": w_read,
           "litdata_checks": w_litdata_checks}


# --------------------------------------------------------------------------- orchestration


def run_worker(spec: dict, work: Path, env_extra: dict | None = None, kill_after: float | None = None) -> dict:
    """Run one step in a child process; wall time, sampled peak RSS of its process tree, optional SIGKILL."""
    import psutil

    res_path = work / "results" / f"{time.time_ns()}.json"
    res_path.parent.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "_result": str(res_path)}
    env = {**os.environ, "KDH_STORE_TOKENIZER": str(work / "tokenizer.json"), **(env_extra or {})}
    env["DATA_OPTIMIZER_CACHE_FOLDER"] = str(work / "litdata-cache" / "chunks")
    env["DATA_OPTIMIZER_DATA_CACHE_FOLDER"] = str(work / "litdata-cache" / "data")
    log = open(work / "worker.log", "a")
    log.write(f"\n=== {json.dumps(spec)}\n")
    log.flush()
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--_worker", json.dumps(spec)],
                         stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    root = psutil.Process(p.pid)
    peak, killed, known, cpu = 0, False, {}, {}
    while p.poll() is None:
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for q in procs:
            known[q.pid] = q
            try:
                total += q.memory_info().rss
                t = q.cpu_times()
                cpu[q.pid] = t.user + t.system  # last value seen per process (at most one interval short)
            except psutil.Error:
                pass
        peak = max(peak, total)
        if kill_after is not None and time.perf_counter() - t0 >= kill_after:
            os.killpg(p.pid, signal.SIGKILL)
            for q in known.values():  # any child that left the group: ours, killed by pid
                try:
                    q.kill()
                except psutil.Error:
                    pass
            p.wait()
            killed = True
            break
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    log.close()
    out = {"wall_seconds": wall, "cpu_seconds_tree": sum(cpu.values()), "peak_rss_tree_mib": peak / MIB,
           "returncode": p.returncode, "killed": killed}
    if res_path.exists():
        out.update(json.loads(res_path.read_text()))
    elif not killed:
        raise RuntimeError(f"worker {spec.get('step')} failed (rc {p.returncode}); see {work / 'worker.log'}")
    return out


def _importable(method: str) -> str | None:
    import importlib.util

    need = {"datatrove": ["datatrove", "orjson", "torch"], "litdata": ["litdata", "torch"]}.get(
        METHOD_SPECS.get(method, (method,))[0], [])
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    return f"not importable: {', '.join(missing)}" if missing else None


def footprint() -> dict:
    """Distributions each library adds on top of the base set, and their installed bytes (RECORD files)."""
    import importlib.metadata as md
    import re

    def name(req: str) -> str:
        return re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0].lower().replace("_", "-")

    def closure(roots: list[str]) -> set[str]:
        seen, stack = set(), [r.lower() for r in roots]
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            try:
                dist = md.distribution(n)
            except md.PackageNotFoundError:
                continue
            seen.add(n)
            for req in dist.requires or []:
                if "extra ==" in req:
                    continue
                stack.append(name(req))
        return seen

    def size(n: str) -> int:
        dist = md.distribution(n)
        total = 0
        for f in dist.files or []:
            try:
                total += (dist.locate_file(f)).stat().st_size
            except OSError:
                pass
        return total

    base = closure(["torch", "numpy", "tokenizers", "transformers", "psutil"])
    out = {"base": sorted(base)}
    for lib, roots in {"datatrove": ["datatrove", "orjson"], "litdata": ["litdata"]}.items():
        try:
            version = md.version(lib)
        except md.PackageNotFoundError:
            out[lib] = {"installed": False}
            continue
        extra = sorted(closure(roots) - base)
        out[lib] = {"version": version, "added": {n: md.version(n) for n in extra}, "count": len(extra),
                    "installed_mib": sum(size(n) for n in extra) / MIB}
    return out


def _store_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _same(a: dict, b: dict) -> bool:
    return {k: v["sha256"] for k, v in a.items()} == {k: v["sha256"] for k, v in b.items()}


def _only_timestamps(differs: dict) -> bool:
    """True when every differing file is a JSON document whose only differing key is a timestamp."""
    return all(d.get("keys_that_differ") == ["updated_at"] for d in differs.values())


def _differs(a_dir: Path, a: dict, b_dir: Path, b: dict) -> dict:
    """Files whose bytes differ; for small text files, both versions (to see what differs)."""
    out = {}
    for k in sorted(set(a) | set(b)):
        if a.get(k, {}).get("sha256") == b.get(k, {}).get("sha256"):
            continue
        entry: dict = {"in_first": k in a, "in_second": k in b}
        if k in a and k in b and k.endswith(".json") and max(a[k]["bytes"], b[k]["bytes"]) < 20000:
            first, second = json.loads((a_dir / k).read_text()), json.loads((b_dir / k).read_text())
            entry["keys_that_differ"] = sorted(key for key in set(first) | set(second)
                                               if first.get(key) != second.get(key))
            entry["first"], entry["second"] = first, second
        out[k] = entry
    return out


def bench_method(method: str, corpora: dict[int, Path], main_size: int, work: Path, args, baseline_fn) -> dict:
    lib, options = METHOD_SPECS[method]
    variant = method != lib  # a variant: preparation at the main size only (same format, same readers)
    res: dict = {"runs": {}, "readers": {}, "options": options}
    base = work / "stores" / method

    def prep(tag: str, size: int, kill_after=None, fresh=True) -> tuple[dict, Path]:
        folder = base / tag
        if fresh:
            shutil.rmtree(folder, ignore_errors=True)
        spec = {"step": "prep", "method": lib, "corpus": str(corpora[size]), "out": str(folder / "out"),
                "logs": str(folder / "logs"), **options}
        r = run_worker(spec, work, kill_after=kill_after)
        return r, folder / "out"

    for size in sorted(corpora):
        if variant and size != main_size:
            continue
        # at the main size: `--repeats` pairs of (the tokenizer alone on the same texts, then the store), as the
        # machine may be shared; throughput = best of each, so both get their least-disturbed run
        pairs = []
        for rep in range(args.repeats if size == main_size else 1):
            alone = baseline_fn()["encode_batch_fast"] if size == main_size else None
            r, out = prep(f"{size}" if rep == 0 else f"{size}-rep", size)
            r["tokens_per_s_inner"] = r["tokens"] / r["inner_seconds"]
            r["tokens_per_cpu_s_tree"] = r["tokens"] / r["cpu_seconds_tree"]
            pairs.append((alone, r, out))
        shutil.rmtree(base / f"{size}-rep", ignore_errors=True)
        r, out = pairs[0][1], pairs[0][2]
        r["store_bytes"] = _store_bytes(out)
        r["bytes_per_token"] = r["store_bytes"] / r["tokens"]
        r["files"] = len([p for p in out.rglob("*") if p.is_file()])
        r["tokens_per_s_wall"] = r["tokens"] / r["wall_seconds"]
        if size == main_size:
            r["pairs"] = [{"alone_tokens_per_s": a["tokens_per_s"], "alone_tokens_per_cpu_s": a["tokens_per_cpu_s"],
                           "store_tokens_per_s": x["tokens_per_s_inner"], "store_tokens_per_cpu_s": x["tokens_per_cpu_s_tree"],
                           "store_wall_seconds": x["wall_seconds"], "store_peak_rss_tree_mib": x["peak_rss_tree_mib"]}
                          for a, x, _ in pairs]
            best = {k: max(p[k] for p in r["pairs"]) for k in r["pairs"][0]}
            r["best_tokens_per_s"] = best["store_tokens_per_s"]
            r["alone_best_tokens_per_s"] = best["alone_tokens_per_s"]
            r["ratio_to_tokenizer"] = best["store_tokens_per_s"] / best["alone_tokens_per_s"]
            r["cpu_ratio_to_tokenizer"] = best["store_tokens_per_cpu_s"] / best["alone_tokens_per_cpu_s"]
            r["pair_ratios"] = [p["store_tokens_per_s"] / p["alone_tokens_per_s"] for p in r["pairs"]]
            r["peak_rss_tree_mib"] = max(p["store_peak_rss_tree_mib"] for p in r["pairs"])
        res["runs"][str(size)] = r
        print(f"  {method} {size / 1e6:.0f}M: {r['tokens_per_s_inner'] / 1e6:.2f} Mtok/s"
              + (f" (ratio {r['ratio_to_tokenizer']:.2f}, pairs {[round(x, 2) for x in r['pair_ratios']]})"
                 if size == main_size else "")
              + f", {r['bytes_per_token']:.3f} B/tok, peak RSS tree {r['peak_rss_tree_mib']:.0f} MiB", flush=True)
        for mode in () if variant else READERS[method]:
            for cold in (True, False):
                spec = {"step": "read", "out": str(out), "mode": mode, "cold": cold, "seed": 1,
                        "cache": str(work / "litdata-cache" / "chunks")}
                rr = run_worker(spec, work)
                res["readers"].setdefault(mode, {}).setdefault(str(size), {})["cold" if cold else "warm"] = rr
        if size == main_size:
            res["main_tree"] = _tree(out)
            main_out = out
            if method == "litdata":
                res["checks"] = run_worker({"step": "litdata_checks", "out": str(out),
                                            "cache": str(work / "litdata-cache" / "chunks")}, work)
    if variant:
        shutil.rmtree(base, ignore_errors=True)
        return res

    if not args.no_kill:
        main = res["runs"][str(main_size)]
        r2, out2 = prep("clean-2", main_size)
        tree2 = _tree(out2)
        res["second_clean_run_identical"] = _same(res["main_tree"], tree2)
        res["second_clean_run_differs"] = _differs(main_out, res["main_tree"], out2, tree2)
        res["second_clean_run_identical_but_timestamps"] = _only_timestamps(res["second_clean_run_differs"])
        shutil.rmtree(base / "clean-2", ignore_errors=True)
        kill_at = 0.5 * main["wall_seconds"]
        k1, out3 = prep("kill", main_size, kill_after=kill_at)
        partial = {str(p.relative_to(out3)): p.stat().st_size for p in sorted(out3.rglob("*")) if p.is_file()} \
            if out3.exists() else {}
        k2, _ = prep("kill", main_size, fresh=False)
        tree3 = _tree(out3)
        res["kill_rerun"] = {
            "killed_at_seconds": kill_at, "killed": k1["killed"], "files_after_kill": partial,
            "rerun_wall_seconds": k2["wall_seconds"], "rerun_inner_seconds": k2["inner_seconds"],
            "rerun_shards_skipped": k2.get("shards_skipped"),
            "rerun_completions_found": k2.get("completions_before"),
            "identical_to_clean_run": _same(res["main_tree"], tree3),
            "differs": _differs(main_out, res["main_tree"], out3, tree3),
        }
        res["kill_rerun"]["identical_but_timestamps"] = _only_timestamps(res["kill_rerun"]["differs"])
        shutil.rmtree(base / "kill", ignore_errors=True)
        print(f"  {method}: second clean run identical={res['second_clean_run_identical']}, "
              f"kill+rerun identical={res['kill_rerun']['identical_to_clean_run']}", flush=True)
    return res


def determinism_defaults(tiny: Path, work: Path) -> dict:
    """Two runs each of the libraries' order-changing defaults on a small corpus: identical bytes?"""
    out = {}
    cases = {"datatrove seed=None (default)": ("datatrove", {"seed": None}),
             "litdata keep_data_ordered=False, no checkpoint (default)": ("litdata", {"checkpoint": False, "ordered": None})}
    for label, (method, kw) in cases.items():
        if _importable(method):
            continue
        trees = []
        for k in range(2):
            folder = work / "stores" / "defaults" / f"{method}-{k}"
            shutil.rmtree(folder, ignore_errors=True)
            run_worker({"step": "prep", "method": method, "corpus": str(tiny), "out": str(folder / "out"),
                        "logs": str(folder / "logs"), **kw}, work)
            trees.append((folder / "out", _tree(folder / "out")))
        differs = _differs(trees[0][0], trees[0][1], trees[1][0], trees[1][1])
        out[label] = {"identical": not differs, "identical_but_timestamps": _only_timestamps(differs),
                      "files": len(trees[0][1]), "differs": sorted(differs)}
    return out


def table(results: dict) -> str:
    main = str(results["tokens_main"])
    b = results["baseline"]
    lines = [f"corpus {int(main) / 1e6:g}M target tokens; the tokenizer alone (encode_batch_fast, 2 rayon threads, "
             f"texts in memory): {b['encode_batch_fast_mean_tokens_per_s'] / 1e6:.2f} Mtok/s (mean of the run before "
             f"and after everything), {b['one_thread']['encode_batch_fast']['tokens_per_s'] / 1e6:.2f} on 1 thread",
             "ratio = best store prep tokens/s (in the prep process, after its imports) / best tokenizer-alone "
             "tokens/s, over pairs run back to back; cpu ratio = the same with tokens per CPU-second (whole prep "
             "process tree, imports included); == : same sha256 of every file (ts: all but a timestamp field)",
             f"{'method':<15} {'Mtok/s':>7} {'alone':>6} {'ratio':>6} {'cpu ratio':>9} {'B/tok':>6} "
             f"{'prep RSS':>9} {'2nd run ==':>10} {'kill+rerun ==':>13}"]

    def same(r: dict | None, key: str, ts_key: str) -> str:
        if not r or key not in r:
            return "-"
        return "yes" if r[key] else ("ts" if r.get(ts_key) else "no")
    for m, r in results["methods"].items():
        if "skipped" in r:
            lines.append(f"{m:<15} skipped: {r['skipped']}")
            continue
        run = r["runs"][main]
        lines.append(f"{m:<15} {run['best_tokens_per_s'] / 1e6:>7.2f} {run['alone_best_tokens_per_s'] / 1e6:>6.2f} "
                     f"{run['ratio_to_tokenizer']:>6.2f} {run['cpu_ratio_to_tokenizer']:>9.2f} "
                     f"{run['bytes_per_token']:>6.3f} {run['peak_rss_tree_mib']:>7.0f}Mi "
                     f"{same(r, 'second_clean_run_identical', 'second_clean_run_identical_but_timestamps'):>10} "
                     f"{same(r.get('kill_rerun'), 'identical_to_clean_run', 'identical_but_timestamps'):>13}")
    lines.append("")
    lines.append(f"{'reader':<10} {'tokens':>7} {'us/blk cold':>11} {'us/blk warm':>11} {'RSS open':>9} "
                 f"{'RSS peak':>9} {'grow(warm)':>10} {'file RSS':>9}")
    for m, r in results["methods"].items():
        for mode, sizes in r.get("readers", {}).items():
            for size, cw in sorted(sizes.items(), key=lambda kv: int(kv[0])):
                c, w = cw["cold"], cw["warm"]
                lines.append(f"{mode:<10} {int(size) / 1e6:>6.0f}M {c['us_per_block_mean']:>11.1f} "
                             f"{w['us_per_block_mean']:>11.1f} {w['rss_after_open_mib']:>7.0f}Mi "
                             f"{w['rss_peak_mib']:>7.0f}Mi {w['rss_growth_while_reading_mib']:>8.1f}Mi "
                             f"{w['rss_file_end_mib']:>7.0f}Mi")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=20_000_000, help="main corpus size (tokens incl. one EOS per doc)")
    ap.add_argument("--scales", type=float, nargs="*", default=[0.5, 2.0],
                    help="extra corpus sizes, as multiples of --tokens, for RSS/time growth")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    ap.add_argument("--no-kill", action="store_true", help="skip the second clean run and the kill+rerun")
    ap.add_argument("--repeats", type=int, default=2,
                    help="(tokenizer alone, store) pairs at the main size; throughput is the best of each")
    ap.add_argument("--work", default="/tmp/kdh-store-bench", help="scratch folder (corpora, stores)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", default=None, help="write the JSON results here")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._worker:
        spec = json.loads(args._worker)
        result = WORKERS[spec["step"]](spec)
        Path(spec["_result"]).write_text(json.dumps(result))
        return

    import psutil

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "worker.log").unlink(missing_ok=True)
    t_start = time.time()
    results: dict = {
        "tokens_main": args.tokens,
        "machine": {"cpus": os.cpu_count(), "mem_gib": psutil.virtual_memory().total / 2**30,
                    "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_start": os.getloadavg()},
    }
    import importlib.metadata as md

    results["versions"] = {}
    for pkg in ("numpy", "tokenizers", "transformers", "torch", "datatrove", "litdata", "psutil"):
        try:
            results["versions"][pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            results["versions"][pkg] = None
    results["setup"] = run_worker({"step": "setup", "tokenizer_json": str(work / "tokenizer.json")}, work)
    assert results["setup"]["vocab_size"] <= 65536 and results["setup"]["eos"] == EOS

    sizes = sorted({args.tokens, *(int(args.tokens * s) for s in args.scales)})
    corpora = {}
    results["corpora"] = {}
    for size in sorted({*sizes, 1_000_000}):
        d = work / "corpus" / f"{size}-{args.seed}"
        if not d.exists():
            results["corpora"][str(size)] = run_worker({"step": "corpus", "tokens": size, "seed": args.seed + size,
                                                        "dir": str(d)}, work)
        results["corpora"].setdefault(str(size), {"bytes": sum(p.stat().st_size for p in d.glob("*.jsonl"))})
        corpora[size] = d
    tiny = corpora[1_000_000] if 1_000_000 in sizes else corpora.pop(1_000_000)
    print(f"corpora ready: {', '.join(f'{s / 1e6:g}M' for s in sorted(corpora))}", flush=True)

    def baseline(tag: str, fns=("encode_batch_fast", "encode_batch")) -> dict:
        r = run_worker({"step": "baseline", "corpus": str(corpora[args.tokens]), "fns": list(fns)}, work)
        print(f"  baseline {tag}: " + ", ".join(f"{f} {r[f]['tokens_per_s'] / 1e6:.2f} Mtok/s" for f in fns),
              flush=True)
        return r

    results["baseline"] = {"before": baseline("before")}
    results["baseline"]["one_thread"] = run_worker(
        {"step": "baseline", "corpus": str(corpora[args.tokens]), "fns": ["encode_batch_fast"]}, work,
        env_extra={"RAYON_NUM_THREADS": "1"})
    results["methods"] = {}
    for method in args.methods:
        why = _importable(method)
        if why:
            print(f"{method}: skipped ({why})", flush=True)
            results["methods"][method] = {"skipped": why}
            continue
        print(f"{method}:", flush=True)
        results["methods"][method] = bench_method(
            method, corpora, args.tokens, work, args,
            lambda: baseline("adjacent", ["encode_batch_fast"]))
    results["baseline"]["after"] = baseline("after")
    b = results["baseline"]
    b["encode_batch_fast_mean_tokens_per_s"] = (b["before"]["encode_batch_fast"]["tokens_per_s"]
                                               + b["after"]["encode_batch_fast"]["tokens_per_s"]) / 2
    b["encode_batch_mean_tokens_per_s"] = (b["before"]["encode_batch"]["tokens_per_s"]
                                          + b["after"]["encode_batch"]["tokens_per_s"]) / 2
    if not args.no_kill:
        results["defaults_determinism_1M"] = determinism_defaults(tiny, work)
    if "numpy-1proc" in results["methods"] and "numpy-pool2" in results["methods"] \
            and "main_tree" in results["methods"]["numpy-pool2"]:
        results["numpy_pool2_identical_to_1proc"] = _same(results["methods"]["numpy-1proc"]["main_tree"],
                                                          results["methods"]["numpy-pool2"]["main_tree"])
    results["footprint"] = footprint()
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["machine"]["bench_minutes"] = (time.time() - t_start) / 60
    print()
    print(table(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
