"""Peak memory and time of one forward + backward: distillation_loss (fused, chunked) vs the reference.

    python bench/loss_memory.py                     # the table: V = 1024 and 50k, B×T = 4×256, H = 64
    python bench/loss_memory.py --vocab 50000 --variant fused --chunk 256    # one measurement, as JSON

Every measurement runs in a fresh subprocess so that peaks do not mix: peak RSS (ru_maxrss) after the
first forward + backward minus the peak before it (inputs already built). Each is taken twice:
- with glibc's default malloc, i.e. what a CPU process really costs. Its mmap threshold grows with freed
  blocks, after which chunk-sized buffers come from a heap it does not hand back, so small chunks can
  look worse than they are;
- with MALLOC_MMAP_THRESHOLD_=131072 (fixed), so freed buffers go back to the OS at once and the peak
  follows what torch actually holds.
Seconds per call: the mean of --repeat further calls after the first (default malloc). A tiny warm-up
call runs before the baseline so that one-off lazy initialisation is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

BATCH, LENGTH, HIDDEN = 4, 256, 64
VARIANTS = [("reference", None), ("fused", 1024), ("fused", 256), ("fused", 64)]


def measure(vocab: int, variant: str, chunk: int | None, repeat: int) -> dict:
    import torch

    from distiller.losses import distillation_loss, distillation_loss_reference

    def problem(vocab: int, length: int) -> tuple:
        hidden = torch.randn(BATCH, length, HIDDEN, requires_grad=True)
        head = torch.randn(vocab, HIDDEN, requires_grad=True)
        teacher = torch.randn(BATCH, length, HIDDEN), torch.randn(vocab, HIDDEN)
        return hidden, head, *teacher, torch.randint(0, vocab, (BATCH, length))

    def step(hidden, head, teacher_hidden, teacher_head, labels) -> None:
        if variant == "reference":
            loss = distillation_loss_reference(hidden @ head.T, teacher_hidden @ teacher_head.T, labels)[0]
        else:
            loss = distillation_loss(hidden, head, teacher_hidden, teacher_head, labels, chunk_size=chunk)[0]
        loss.backward()
        hidden.grad = head.grad = None

    torch.manual_seed(0)
    step(*problem(16, 8))  # warm-up: one-off lazy initialisation is not part of the loss's peak
    inputs = problem(vocab, LENGTH)
    peak_bytes = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    before = peak_bytes()
    step(*inputs)
    peak = peak_bytes() - before
    started = time.perf_counter()
    for _ in range(repeat):
        step(*inputs)
    seconds = (time.perf_counter() - started) / repeat if repeat else None
    return {"vocab": vocab, "variant": variant, "chunk": chunk,
            "peak_rss_bytes": peak, "seconds_per_call": seconds}


def run_child(vocab: int, variant: str, chunk: int | None, repeat: int, fixed_mmap_threshold: bool) -> dict:
    env = dict(os.environ)
    if fixed_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    command = [sys.executable, __file__, "--vocab", str(vocab), "--variant", variant, "--repeat", str(repeat)]
    if chunk is not None:
        command += ["--chunk", str(chunk)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(repeat: int) -> None:
    mb = 1024 * 1024
    threads = os.environ.get("OMP_NUM_THREADS", os.cpu_count())
    print(f"B×T = {BATCH}×{LENGTH}, H = {HIDDEN}, float32, {threads} CPU threads; peaks are Δ max RSS in MiB")
    print(f"{'vocab':>7} {'variant':>10} {'chunk':>6} {'[B·T,V] f32':>12} {'peak (glibc)':>13} "
          f"{'peak (fixed mmap)':>18} {'s/call':>7}")
    for vocab in (1024, 50_000):
        for variant, chunk in VARIANTS:
            default = run_child(vocab, variant, chunk, repeat, fixed_mmap_threshold=False)
            fixed = run_child(vocab, variant, chunk, 0, fixed_mmap_threshold=True)
            print(f"{vocab:>7} {variant:>10} {chunk or '-'!s:>6} {BATCH * LENGTH * vocab * 4 / mb:>12.1f} "
                  f"{default['peak_rss_bytes'] / mb:>13.1f} {fixed['peak_rss_bytes'] / mb:>18.1f} "
                  f"{default['seconds_per_call']:>7.3f}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--variant", choices=["reference", "fused"])
    parser.add_argument("--chunk", type=int)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.vocab is None:
        table(args.repeat)
    else:
        print(json.dumps(measure(args.vocab, args.variant or "fused", args.chunk, args.repeat)))
