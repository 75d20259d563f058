"""One process against two (DDP, FSDP2) on the same global batch: tokens/s and peak RSS per rank.

    python bench/sharded.py                      # the demo world of $KDH_DEMO_SIZE; writes docs/bench/sharded.json
    python bench/sharded.py --steps 40 --out /tmp/sharded.json

Each configuration runs ``distiller.trainer.distill`` in fresh processes (one, or two under
``accelerate launch``, gloo on CPU; ``--threads`` per rank, default 1), the same global batch of
``--batch-size`` rows per step (each of two processes takes half), no checkpoint but the final one.
Each rank reports its own ru_maxrss and the run's tokens/s (global tokens over the loop's seconds).
Run it on an otherwise idle machine: on 2 cores a second busy process slows torch several-fold.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = [("1 process", 1, "ddp"), ("2 processes, ddp", 2, "ddp"), ("2 processes, fsdp", 2, "fsdp")]


def worker(args) -> None:
    """One rank: distil, then write what this rank measured to <out>/rank<r>.json."""
    from distiller.config import DistillConfig
    from distiller.trainer import distill

    world = json.loads(args.world)
    config = DistillConfig(teacher=world["teacher"], student=world["student"], output_dir=args.run_dir,
                           steps=args.steps, batch_size=args.batch_size // args.processes, block_size=args.block_size,
                           interval=args.steps, save_every=args.steps, sharding=args.sharding, progress=False)
    result = distill(config, world["store"])
    rank = int(os.environ.get("RANK", "0"))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    (Path(args.run_dir) / f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "tokens_per_s": result.tokens_per_s, "peak_rss_mb": peak_mb, "seconds": result.seconds}))


def demo_world() -> dict:
    from harness import corpora, home, inputs

    home.configure_environment()
    world = inputs.demo_world()
    store = corpora.store_for(inputs.open_suite(None), str(world.student_dir)).root
    return {"teacher": str(world.teacher_dir), "student": str(world.student_dir), "store": str(store)}


def run(name: str, processes: int, sharding: str, world: dict, args) -> dict:
    run_dir = tempfile.mkdtemp(prefix="kdh-sharded-")
    own = ["--worker", "--world", json.dumps(world), "--run-dir", run_dir, "--processes", str(processes),
           "--sharding", sharding, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--block-size", str(args.block_size)]
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    threads = str(args.threads)
    subprocess.run([*launcher, __file__, *own], check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": threads})
    ranks = [json.loads((Path(run_dir) / f"rank{r}.json").read_text()) for r in range(processes)]
    return {"config": name, "processes": processes, "sharding": sharding, "threads_per_rank": int(threads),
            "tokens_per_s": ranks[0]["tokens_per_s"], "peak_rss_mb_per_rank": [r["peak_rss_mb"] for r in ranks]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8, help="the global batch: rows per step over all ranks")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS per rank (1: on a busy 2-core machine, 2 threads in one process "
                             "spin against other work and measure the contention, not the run)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "sharded.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--world", "--run-dir", "--sharding"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    world = demo_world()
    rows = [run(name, processes, sharding, world, args) for name, processes, sharding in CONFIGS]
    for row in rows:
        print(f"{row['config']:<20} {row['tokens_per_s']:>10,.0f} tokens/s  peak RSS per rank "
              f"{', '.join(f'{m:,.0f} MB' for m in row['peak_rss_mb_per_rank'])}")
    meta = {"command": "python bench/sharded.py " + " ".join(sys.argv[1:]), "cpus": os.cpu_count(),
            "demo_size": os.environ.get("KDH_DEMO_SIZE", "default"), "steps": args.steps,
            "global_batch": args.batch_size, "block_size": args.block_size}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
