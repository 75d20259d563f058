"""Agreement at a realistic vocabulary: a slice's documents a batch at a time against one at a time.

    python bench/agreement.py            # docs/bench/agreement.json

Two random Llama-family models around the real Qwen2 tokenizer (151,646 entries; the teacher 4
layers of 512, the student 2 of 256) compare their next-token distributions on 64 documents of the
demo world's prose and code (harness/agreement.py, same vocabulary). Each way runs in a process of
its own, so that its peak resident memory is its own: per document (``BATCH_TOKENS`` = 1, how
agreement read documents before) and batched (``BATCH_TOKENS`` = 4,096 padded tokens).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT.parent / "shared" / "fixtures" / "tokenizers" / "qwen2"


def measure(work: Path, batch_tokens: int) -> dict:
    """One way, in this process: seconds and figures of the tally, peak resident memory."""
    sys.path.insert(0, str(ROOT))
    from harness import agreement
    from harness.demo import ensure_world
    from harness.home import configure_environment, kdh_home
    from harness.models import ModelRef, load

    configure_environment()
    world = ensure_world(kdh_home(), "default", progress=False)
    texts = [json.loads(line)["text"][:2000] for domain in ("prose", "code")
             for line in world.domain_file(domain, "test_ppl.jsonl").read_text().splitlines()[:32]]
    teacher = agreement.Side.of(*load(ModelRef("teacher", str(work / "teacher"))))
    student = agreement.Side.of(*load(ModelRef("student", str(work / "student"))))
    agreement.BATCH_TOKENS = batch_tokens
    started = time.perf_counter()
    tally = agreement.same_vocabulary_tally(teacher, student, texts)
    seconds = time.perf_counter() - started
    return {"batch_tokens": batch_tokens, "documents": len(texts), "seconds": seconds,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, **tally.figures()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/kdh-bench-agreement")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "agreement.json"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: measure one way, print JSON
    args = parser.parse_args()
    work = Path(args.work)
    if args.one is not None:
        print(json.dumps(measure(work, args.one)))
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from families import build_model

    if not (work / "student" / "config.json").is_file():
        build_model("llama", TOKENIZER, work / "teacher", layers=4, hidden=512, heads=8, context=2048, seed=1)
        build_model("llama", TOKENIZER, work / "student", layers=2, hidden=256, heads=4, context=2048, seed=2)
    results = []
    for batch_tokens in (1, 4096):
        done = subprocess.run([sys.executable, __file__, "--work", str(work), "--one", str(batch_tokens)],
                              capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "vocabulary": 151646,
                                          "results": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
