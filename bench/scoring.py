"""Scoring: `kdh eval` against plain lm-eval on the same model and tasks, and the result cache.

    python bench/scoring.py [--repeats 3] [--out docs/bench/scoring.json]

The model is the demo teacher; the tasks are the default suite's eight slices (4 domains × a
perplexity and a multiple-choice slice, 120 documents each), handed to lm-eval as the very task
configs kdh builds (written out as YAML). Every variant is a fresh process, timed from start to
exit (imports, model load, scoring, writing results), as a user experiences it:

- lm-eval CLI: `lm-eval run --model hf … --include_path DIR --tasks …` (what a user types; it
  indexes lm-eval's built-in task files as well, and runs simple_evaluate's default 100,000 bootstrap
  iterations for the standard errors, which its CLI cannot change).
- lm-eval API: a minimal script around `lm_eval.simple_evaluate` with the same tasks and settings and
  `TaskManager(include_defaults=False)`: the floor, plain lm-eval doing only this work.
- kdh eval (cold): `kdh eval --model teacher=DIR --no-cache` (also writes the scorecard, runs the GX
  validation and logs the run to MLflow).
- kdh eval (cached): the same without --no-cache, the teacher's results coming from the cache.

Same settings everywhere (but the CLI's bootstrap): batch 16, limit 120, 100 bootstrap iterations, per-document samples logged,
seed 0. One warm-up run of each variant first (file caches, the datasets cache, the MLflow store),
then the repeats interleaved; the median and the fastest are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"batch_size": 16, "limit": 120, "bootstrap_iters": 100}

API_SCRIPT = """
import sys, lm_eval
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
model_dir, include, out = sys.argv[1], sys.argv[2], sys.argv[3]
tasks = sys.argv[4].split(",")
lm = HFLM(pretrained=model_dir, batch_size={batch_size}, dtype="float32", device="cpu")
results = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=TaskManager(include_path=include,
    include_defaults=False), limit={limit}, bootstrap_iters={bootstrap_iters}, log_samples=True, random_seed=0,
    numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
import json, pathlib
pathlib.Path(out).write_text(json.dumps(results["results"], default=str))
""".format(**SETTINGS)


def task_files(folder: Path) -> list[str]:
    """The default suite's slices as lm-eval task YAML files, exactly the configs kdh passes inline."""
    from harness.inputs import open_suite
    from harness.taskfiles import inline_task, task_name

    suite = open_suite(str(ROOT / "suites" / "default.yaml"))
    names = []
    for domain in suite.domains:
        for slice_ in domain.slices:
            name = task_name(domain.name, slice_.name)
            (folder / f"{name}.yaml").write_text(yaml.safe_dump(inline_task(slice_, name), sort_keys=False))
            names.append(name)
    return names


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
        raise SystemExit(f"failed (exit {out.returncode}): {' '.join(command)}")
    return seconds


def scoring_seconds(eval_out: Path) -> float:
    """The scoring time kdh recorded for the teacher (lm-eval's work inside kdh eval)."""
    card = json.loads((eval_out / "scorecard.json").read_text())
    return float(card["efficiency"][0]["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "scoring.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from harness.demo import ensure_world
    from harness.home import configure_environment, kdh_home

    configure_environment()
    world = ensure_world(kdh_home(), "default", progress=False)
    work = Path(tempfile.mkdtemp(prefix="kdh-bench-scoring-"))
    tasks_dir = work / "tasks"
    tasks_dir.mkdir()
    names = task_files(tasks_dir)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    bin_dir = Path(sys.executable).parent
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    teacher = str(world.teacher_dir)

    def kdh_eval(cached: bool, i: int) -> list[str]:
        return [str(bin_dir / "kdh"), "eval", "--model", f"teacher={teacher}", "--out", str(work / f"kdh-{cached}-{i}"),
                "--tracking-uri", tracking] + ([] if cached else ["--no-cache"])

    variants = {
        "lm-eval CLI": lambda i: [str(bin_dir / "lm-eval"), "run", "--model", "hf", "--model_args",
                                  f"pretrained={teacher},dtype=float32", "--tasks", ",".join(names),
                                  "--include_path", str(tasks_dir), "--device", "cpu", "--batch_size", str(SETTINGS["batch_size"]),
                                  "--limit", str(SETTINGS["limit"]), "--log_samples", "--output_path",
                                  str(work / f"cli-{i}"), "--seed", "0"],
        "lm-eval API": lambda i: [sys.executable, "-c", API_SCRIPT, teacher, str(tasks_dir), str(work / f"api-{i}.json"),
                                  ",".join(names)],
        "kdh eval (cold)": lambda i: kdh_eval(False, i),
        "kdh eval (cached)": lambda i: kdh_eval(True, i),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    kdh_scoring: list[float] = []
    for i in range(-1, args.repeats):  # -1: the warm-up round, not kept
        for name, command in variants.items():
            s = timed(command(i), env)
            print(f"{'warm-up' if i < 0 else f'repeat {i}'}: {name}: {s:.1f} s", flush=True)
            if i >= 0:
                seconds[name].append(s)
                if name == "kdh eval (cold)":
                    kdh_scoring.append(scoring_seconds(work / f"kdh-False-{i}"))
    summary = {name: {"median": statistics.median(v), "best": min(v), "all": v} for name, v in seconds.items()}
    floor, cold, cached = (summary[n]["median"] for n in ("lm-eval API", "kdh eval (cold)", "kdh eval (cached)"))
    result = {
        "date": time.strftime("%Y-%m-%d"), "tasks": names, "settings": SETTINGS, "seconds": summary,
        "kdh_teacher_scoring_seconds": kdh_scoring,
        "kdh_overhead_vs_api": cold / floor - 1,
        "kdh_overhead_vs_cli": cold / summary["lm-eval CLI"]["median"] - 1,
        "cache_speedup_command": cold / cached,
        "cache_speedup_vs_scoring": statistics.median(kdh_scoring) / max(cached, 1e-9),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "seconds"}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
