"""Growth: how scoring time and distillation time grow with samples, domains, sequence length and vocabulary.

    python bench/growth.py [--out docs/bench/growth.json]

A few points per axis, everything else held at the demo's defaults; each point in a fresh process
(so a point's peak and allocator state do not leak into the next). Reported: seconds per point and the
slope of log(time) against log(size), i.e. the exponent k in time ∝ size^k (1 = linear).

Scoring (lm-eval through kdh's `evaluate_model`, the demo teacher, no cache): documents per slice
(limit), domains in the suite, and vocabulary (random-initialised models of the teacher's shape with
the demo tokenizer). Distillation (`distill()`, 20 steps of batch 8, DDK every 10 steps so updates are
included): samples (steps), domains, sequence length (block) and vocabulary.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOMAINS = ("code", "prose", "arithmetic", "records")
AXES = {
    "scoring": {"samples": [30, 60, 120, 240], "domains": [1, 2, 4], "vocab": [1024, 8192, 32768]},
    "distillation": {"samples": [10, 20, 40], "domains": [1, 2, 4], "sequence": [64, 128, 256],
                     "vocab": [1024, 8192, 32768]},
}
DEFAULTS = {"samples": {"scoring": 120, "distillation": 20}, "domains": 4, "sequence": 256, "vocab": 1024}


def _models(vocab: int, folder: Path, world) -> tuple[str, str]:
    """The demo teacher and student, or random-initialised ones of their shapes with ``vocab`` rows."""
    from bench.distill_step import child_build

    if vocab == world.manifest["recipe"]["vocab_size"]:
        return str(world.teacher_dir), str(world.student_dir)
    child_build({"vocab": vocab, "dir": str(folder)})
    return str(folder / "teacher"), str(folder / "student")


def child(spec: dict) -> dict:
    from dataclasses import replace

    from harness.inputs import open_suite
    from harness.demo import ensure_world
    from harness.home import configure_environment, kdh_home

    configure_environment()
    world = ensure_world(kdh_home(), "default", progress=False)
    folder = Path(tempfile.mkdtemp(prefix="kdh-growth-"))
    teacher, student = _models(spec["vocab"], folder, world)
    domains = DOMAINS[: spec["domains"]]
    if spec["kind"] == "scoring":
        from harness.models import ModelRef
        from harness.scoring import ScoringOptions, evaluate_model

        suite = open_suite(str(ROOT / "suites" / "default.yaml"))
        suite = replace(suite, domains=tuple(d for d in suite.domains if d.name in domains))
        options = ScoringOptions(limit=spec["samples"], use_cache=False)
        started = time.perf_counter()
        _, _, efficiency = evaluate_model(ModelRef.parse(f"teacher={teacher}"), suite, options)
        return {"seconds": time.perf_counter() - started, "scoring_seconds": efficiency["seconds"]}
    from distiller.trainer import DistillConfig, distill

    config = DistillConfig(teacher=teacher, student=student, output_dir=str(folder / "out"), steps=spec["samples"],
                           batch_size=8, block_size=spec["sequence"], interval=10, save_every=10 ** 9,
                           progress=False, seed=0)
    result = distill(config, {d: (world.domain_file(d, "train.jsonl"), world.domain_file(d, "validation.jsonl"))
                              for d in domains})
    return {"seconds": result.seconds, "tokens_per_s": result.tokens_per_s, "ddk_seconds": result.ddk_seconds,
            "setup_seconds": result.setup_seconds}


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y on log x."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "growth.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    results: dict = {}
    for kind, axes in AXES.items():
        for axis, values in axes.items():
            points = []
            for value in values:
                spec = {"kind": kind, "samples": DEFAULTS["samples"][kind], "domains": DEFAULTS["domains"],
                        "sequence": DEFAULTS["sequence"], "vocab": DEFAULTS["vocab"], axis: value}
                out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                     text=True)
                if out.returncode != 0:
                    sys.stderr.write(out.stderr[-3000:])
                    raise SystemExit(f"growth point failed: {spec}")
                point = {"value": value, **json.loads(out.stdout.strip().splitlines()[-1])}
                # Scoring: lm-eval's own time; distillation: the loop's (its set-up is a constant).
                point["time"] = point["scoring_seconds"] if kind == "scoring" else point["seconds"]
                points.append(point)
                print(f"{kind:>12} {axis:>8} = {value:>6}: {point['time']:7.1f} s", flush=True)
            results.setdefault(kind, {})[axis] = {
                "points": points, "slope": slope([p["value"] for p in points], [p["time"] for p in points])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "defaults": DEFAULTS, "results": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
