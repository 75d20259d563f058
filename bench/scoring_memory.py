"""Peak memory of scoring a 152k-vocabulary model: lm-eval's HFLM (before) vs kdh's BoundedHFLM (after).

    python bench/scoring_memory.py                 # both, fresh process each; writes docs/bench/scoring-memory.json
    python bench/scoring_memory.py --limit 8       # the first 8 documents per slice: less time
    python bench/scoring_memory.py --batch-size 4  # compare at batch 4 (before fits in less memory), then after at 16
    python bench/scoring_memory.py --cap-gb 16     # a child past 16 GiB of address space fails, not the OOM killer

The model: a random Qwen2-shaped causal LM around the Qwen2 fixture tokenizer (vocabulary 151,646),
4 layers × 512 hidden, untied embeddings: 171M parameters, 91% of them the two embedding matrices.
It is scored by ``harness.scoring.evaluate_model`` (what `kdh eval` runs per model) on the default
suite (all eight slices of the demo world named by ``KDH_DEMO_SIZE``, default here: tiny). "before"
swaps BoundedHFLM for lm-eval's own HFLM, which is what scoring used before; nothing else differs.
Both run at --batch-size (default: the suite's, 16); when it is given, "after" runs once more at the
suite's batch size, since "before" at 16 needs ~16 GB and may not fit the machine (on a shared 24 GB
one it did not fit under --cap-gb 16). Each run is its own process; its peak is the kernel's VmHWM
(peak resident set) at the end, which counts everything the process ever held: the interpreter,
torch, lm-eval, the model, the data. Scores: max |difference| over every scorecard value and every
per-document value, before vs after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "bench" / "scoring-memory.json"
SHAPE = {"layers": 4, "hidden": 512, "heads": 8, "context": 2048}


def vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(variant: str, model_dir: str, limit: int | None, batch_size: int | None, cap_gb: float | None) -> dict:
    """One scoring in this process: the scorecard rows, per-document values, seconds and peaks."""
    if cap_gb:
        import resource

        cap = int(cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from harness import home

    home.configure_environment()
    from harness import lm, scoring
    from harness.demo import ensure_world
    from harness.models import ModelRef
    from harness.registry import load_suite

    if variant == "before":
        from lm_eval.models.huggingface import HFLM

        lm.BoundedHFLM = HFLM  # evaluate_model imports it at call time: scoring as it was, lm-eval's own HFLM
    size = os.environ.get("KDH_DEMO_SIZE", "tiny")
    suite = load_suite(home.repo_suites_dir() / "default.yaml",
                       demo_data=lambda: ensure_world(home.kdh_home(), size=size, progress=False).data_dir)
    started = time.perf_counter()
    rows, samples, efficiency = scoring.evaluate_model(
        ModelRef(name="teacher", source=model_dir), suite,
        scoring.ScoringOptions(limit=limit, batch_size=batch_size, use_cache=False))
    return {"variant": variant, "seconds": time.perf_counter() - started, "peak_rss_kib": vm_kib("VmHWM"),
            "scoring_seconds": efficiency["seconds"], "parameters": efficiency["parameters"],
            "batch_size": batch_size or suite.defaults.batch_size,
            "rows": {f"{r['domain']}/{r['slice']}/{r['metric']}": r["value"] for r in rows},
            "samples": {f"{s['domain']}/{s['slice']}/{s['doc_id']}": s["value"] for s in samples}}


def run_child(variant: str, model_dir: Path, limit: int | None, batch_size: int | None,
              cap_gb: float | None) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--model", str(model_dir)]
    if limit is not None:
        command += ["--limit", str(limit)]
    if batch_size is not None:
        command += ["--batch-size", str(batch_size)]
    if cap_gb:
        command += ["--cap-gb", str(cap_gb)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(limit: int | None, batch_size: int | None, cap_gb: float | None) -> None:
    """before and after at ``batch_size`` (the suite's, 16, unless told), compared; and after at the
    suite's batch size too when a smaller one was asked for (the full "before" may not fit the machine)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from families import build_model

    with tempfile.TemporaryDirectory(prefix="kdh-scoring-memory-") as tmp:
        model_dir = build_model("qwen2", ROOT / "tests" / "fixtures" / "tokenizers" / "qwen2", Path(tmp) / "model",
                                **SHAPE)
        runs = [run_child(variant, model_dir, limit, batch_size, cap_gb) for variant in ("before", "after")]
        if batch_size is not None:
            runs.append(run_child("after", model_dir, limit, None, cap_gb))
    before, after = runs[0], runs[1]
    differences = [abs(before[kind][k] - after[kind][k]) for kind in ("rows", "samples") for k in before[kind]]
    report = {
        "model": {"family": "qwen2", "tokenizer": "tests/fixtures/tokenizers/qwen2", "vocabulary": 151_646,
                  **SHAPE, "parameters": after["parameters"]},
        "suite": "default", "demo_size": os.environ.get("KDH_DEMO_SIZE", "tiny"), "limit": limit,
        "threads": os.cpu_count(),
        "runs": [{k: run[k] for k in ("variant", "batch_size", "peak_rss_kib", "scoring_seconds")} for run in runs],
        "max_abs_difference": max(differences), "values_compared": len(differences),
        "command": " ".join(["python bench/scoring_memory.py", *sys.argv[1:]]),
    }
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['model']['parameters']:,} parameters, vocabulary 151,646")
    for run in runs:
        print(f"{run['variant']:>6} batch {run['batch_size']:>2}: peak RSS {run['peak_rss_kib'] / 2**20:6.2f} GiB, "
              f"scoring {run['scoring_seconds']:7.1f} s")
    print(f"before vs after: max |score difference| {report['max_abs_difference']:.3g} over {len(differences)} "
          f"values; wrote {OUT}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, help="documents per slice (default: the suite's)")
    parser.add_argument("--batch-size", type=int,
                        help="batch size of the before/after comparison (default: the suite's)")
    parser.add_argument("--cap-gb", type=float, help="address-space cap of each child, in GiB")
    parser.add_argument("--child", choices=["before", "after"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.limit, args.batch_size, args.cap_gb)))
    else:
        main(args.limit, args.batch_size, args.cap_gb)
