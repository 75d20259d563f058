"""Every benchmark in one command; writes docs/benchmarks.md and its plots.

    pip install -e ".[bench]"        # TRL and matplotlib, on top of the README's set-up
    python -m bench                  # all of it, ~140 min on 2 cores; run it on an otherwise idle machine
    python -m bench --only scoring growth
    python -m bench --render         # rewrite docs/benchmarks.md from docs/bench/*.json, measuring nothing

Each part is its own script (run alone for a quicker look) and saves its results as JSON in docs/bench/:
distill_step (kdh vs TRL's GKD vs a bare loop, 1k and 50k vocabularies), scoring (kdh eval vs lm-eval,
the cache), ddk (CPT, KD, DDK w/o smoothing and DDK over three seeds), growth (time against samples,
domains, sequence length and vocabulary), store_scale (`kdh prepare` against the tokenizer alone, and a
distillation's peak memory from 10M to 500M tokens; ~35 min), cross_vocab (the cross-tokenizer steps
against kd at 152k entries), scoring_memory (kdh eval's peak memory at 152k entries, against lm-eval's
own scorer), classify (kdh classify's accuracy, throughput and the loop on classified data) and
sharded (one process against two, DDP and FSDP2; figures in docs/sharded.md) and realistic (a 124M
student from a 4× teacher at 50k and 152k entries: kdh against TRL and a bare loop, and scoring; ~40 min)
and teacher_signal (the stored teacher signal: bytes, step time, student quality over three seeds)
and onpolicy, onpolicy_quality (kdh's on-policy step against TRL's GKDTrainer; supervised vs on-policy vs
SeqKD on the generation suite over three seeds, ~30 min) and onpolicy_quality_warm (the same from a
student first distilled 1,000 supervised steps, GKD's setting; ~25 min).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "docs" / "bench"
PARTS = {
    "distill_step": ["bench/distill_step.py"],
    "scoring": ["bench/scoring.py", "--repeats", "2"],
    "ddk": ["bench/ddk_comparison.py"],
    "growth": ["bench/growth.py"],
    "store_scale": ["bench/store_scale.py"],
    "cross_vocab": ["bench/cross_vocab.py", "--label", "after, idle machine"],
    "scoring_memory": ["bench/scoring_memory.py", "--limit", "8", "--batch-size", "4", "--cap-gb", "16"],
    "classify": ["bench/classify.py", "--mixture-size", "tiny"],
    "sharded": ["bench/sharded.py"],
    "realistic": ["bench/realistic.py"],
    "teacher_signal": ["bench/teacher_signal.py", "--steps", "100", "--seeds", "3"],
    "onpolicy": ["bench/onpolicy.py"],
    "onpolicy_quality": ["bench/onpolicy_quality.py", "--steps", "200"],
    "onpolicy_quality_warm": ["bench/onpolicy_quality.py", "--warm-steps", "1000", "--steps", "300", "--new-tokens", "16",
                              "--arms", "supervised", "on-policy", "on-policy, reverse KL", "on-policy, λ 1, reverse KL",
                              "--out", "docs/bench/onpolicy-quality-warm.json"],
}


def run(name: str) -> float:
    started = time.perf_counter()
    print(f"[bench] {name}: {' '.join(PARTS[name])}", flush=True)
    subprocess.run([sys.executable, *PARTS[name]], cwd=ROOT, check=True)
    if name == "distill_step":  # its raw results live in the kdh home; keep them beside the others
        from harness.home import kdh_home

        shutil.copy(kdh_home() / "bench" / "distill-step.json", DATA / "distill-step.json")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--render", action="store_true", help="only rewrite docs/benchmarks.md from saved results")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    DATA.mkdir(parents=True, exist_ok=True)
    if not args.render:
        for name in args.only:
            print(f"[bench] {name} took {run(name) / 60:.1f} min", flush=True)
    from bench.report import write_report

    print(f"[bench] wrote {write_report(DATA, ROOT / 'docs' / 'benchmarks.md')}")


if __name__ == "__main__":
    main()
