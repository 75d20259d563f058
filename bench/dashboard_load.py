"""Is the dashboard responsive with thousands of runs? Seed a store, time every view cold and warm.

    python bench/dashboard_load.py                   # 400 loops = 2,400 runs; ~3 min to seed on 2 cores
    python bench/dashboard_load.py --loops 50        # a quicker look
    python bench/dashboard_load.py --loops 50 --keep # keep the store, e.g. for `kdh dashboard --tracking-uri`

The store is filled through MlflowClient with what kdh logs (harness/tracking.py, loop.py, cli.py),
with synthetic values: per loop, a ``loop`` run and under it an ``eval`` (teacher and student, a
nested run per model), a ``distill`` (loss curves, DDK weights and ratios every 50 of 300 steps) and
a ``gate`` (scorecard, verdict); every passing gate promotes a new registry version. Runs are spread
over a year, one suite, four domains. Retention drifts down slowly, so the history view has a slide
to show.

Timed through Streamlit's AppTest (the app's script run and its queries, in process; the browser's
drawing is not included): per view, "cold" with every cache cleared (the first visitor after a
``ttl``), "warm" on the next rerun (every click within the ``ttl``). The raw run query alone is timed
too. Figures go to stdout as a Markdown table (docs/dashboard.md quotes them).
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DOMAINS = ("code", "prose", "arithmetic", "records")
SLICES = {"code": ("ppl", "next-line"), "prose": ("ppl", "next-sentence"), "arithmetic": ("ppl", "answer"),
          "records": ("ppl", "field")}
VIEWS = ("Scorecard", "Gate", "Distillation", "History", "Compare")
DAY_MS = 86_400_000


def _scorecard(models: dict[str, float], rng: random.Random):
    """A kdh Scorecard: per model a skill (1.0 = the teacher); bits per byte and accuracy per domain."""
    import pandas as pd

    from harness.scorecard import Scorecard

    rows = []
    for model, skill in models.items():
        for domain in DOMAINS:
            ppl, choice = SLICES[domain]
            bpb = 2.0 / max(skill - rng.uniform(0, 0.05), 0.05)
            acc = min(1.0, 0.6 * skill + rng.uniform(-0.03, 0.03))
            rows += [
                [model, domain, ppl, "bits_per_byte", bpb, math.nan, 200, False, True, 1.0],
                [model, domain, ppl, "byte_perplexity", 2 ** bpb, math.nan, 200, False, False, 1.0],
                [model, domain, choice, "acc", acc, 0.03, 200, True, True, 1.0],
                [model, domain, choice, "acc_norm", acc, 0.03, 200, True, False, 1.0],
            ]
    from harness.scorecard import EFFICIENCY_COLUMNS, ROW_COLUMNS

    eff = [[m, 984_192 if m == "teacher" else 172_352, 4_000_000 if m == "teacher" else 700_000,
            24_000 if m == "teacher" else 49_000, 820.0, 20.0] for m in models]
    return Scorecard("bench", "teacher", pd.DataFrame(rows, columns=ROW_COLUMNS),
                     pd.DataFrame(eff, columns=EFFICIENCY_COLUMNS),
                     models={m: {"source": f"/models/{m}", "fingerprint": f"{i:064x}"} for i, m in enumerate(models)})


def _table(frame) -> dict:
    """The file ``mlflow.log_table`` writes."""
    import json

    return json.loads(frame.to_json(orient="split", index=False))


def seed(uri: str, artifacts: Path, loops: int, seed_value: int = 0) -> int:
    """Fill the store (artifacts under ``artifacts``); returns the number of runs created."""
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from harness import promotion

    rng = random.Random(seed_value)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("kdh/bench", artifact_location=artifacts.as_uri())
    name = promotion.registered_name("bench")
    client.create_registered_model(name)
    start = int(time.time() * 1000) - 365 * DAY_MS
    champion, version, created = 0.8, 0, 0

    def run(kind, run_name, at, parent=None, tags=None, metrics=(), params=None, status="FINISHED"):
        nonlocal created
        all_tags = {"kdh.kind": kind, "kdh.suite": "bench", **(tags or {})}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        r = client.create_run(experiment, start_time=at, tags=all_tags, run_name=run_name)
        client.log_batch(r.info.run_id, metrics=list(metrics),
                         params=[Param(k, str(v)) for k, v in (params or {}).items()])
        client.set_terminated(r.info.run_id, status, end_time=at + 60_000)
        created += 1
        return r.info.run_id

    for i in range(loops):
        at = start + int(i * 365 * DAY_MS / loops)
        drift = -0.15 * i / max(loops, 1)  # a slow slide, as a team would want to catch
        student = champion + drift / 4 + rng.uniform(-0.02, 0.02)
        candidate = student + rng.uniform(-0.04, 0.06)
        passed = candidate >= student - 0.02
        loop_id = run("loop", "loop bench", at, tags={"kdh.verdict": "pass" if passed else "fail"})

        card = _scorecard({"teacher": 1.0, "student": student}, rng)
        domains = card.domains
        eval_id = run("eval", f"round 1: teacher vs champion v{version}", at + 1000, loop_id,
                      params={"suite": "bench", "reference": "teacher", "models": "teacher,student"},
                      metrics=[Metric(f"{r.model}/{r.domain}/retention", r.retention, at, 0) for r in domains.itertuples()])
        client.log_dict(eval_id, card.to_json(), "scorecard.json")
        for model in ("teacher", "student"):
            mine = card.rows[card.rows["model"] == model]
            metrics = [Metric(f"{r.domain}/{r.slice}/{r.metric}", r.value, at, 0) for r in mine.itertuples()]
            metrics += [Metric(f"{r.domain}/retention", r.retention, at, 0)
                        for r in domains[domains["model"] == model].itertuples()]
            eff = card.efficiency.set_index("model").loc[model]
            metrics += [Metric(f"efficiency/{k}", float(v), at, 0) for k, v in eff.items()]
            run("eval", model, at + 1500, eval_id, tags={"kdh.model": model}, metrics=metrics,
                params={"model.name": model, "model.source": f"/models/{model}"})

        metrics, weights = [], {d: 0.25 for d in DOMAINS}
        for step in range(0, 301, 10):
            loss = 5.0 * math.exp(-step / 200) + 1.0
            metrics += [Metric(k, v, at + step * 100, step) for k, v in
                        {"loss": loss, "ce": loss * 0.9, "kd": loss * 0.5, "lr": 2e-3, "tokens_per_s": 9000 + step}.items()
                        if step > 0]
            if step % 50 == 0:
                ratios = {d: 1.0 + (j + 1) * 0.2 * math.exp(-step / 400) for j, d in enumerate(DOMAINS)}
                psi = {d: weights[d] * math.exp(ratios[d]) for d in DOMAINS}
                weights = {d: 0.5 * psi[d] / sum(psi.values()) + 0.5 / len(DOMAINS) for d in DOMAINS}
                metrics += [Metric(f"ddk/weight/{d}", weights[d], at, step) for d in DOMAINS]
                metrics += [Metric(f"ddk/ratio/{d}", ratios[d], at, step) for d in DOMAINS]
        run("distill", "distill round 1", at + 2000, loop_id, metrics=metrics,
            params={"teacher": "/models/teacher", "student": "/models/student", "steps": 300})

        gate_card = _scorecard({"teacher": 1.0, "candidate": candidate, "champion": student}, rng)
        gdom = gate_card.domains.set_index(["model", "domain"])["retention"]
        verdict = []
        for d in DOMAINS:
            drop = gdom[("champion", d)] - gdom[("candidate", d)]
            ok = drop <= 0.02 or rng.random() < 0.5
            verdict += [[d, "(domain)", "retention", "pass" if gdom[("candidate", d)] >= 0.6 else "fail",
                         gdom[("candidate", d)], 0.6, math.nan, "keeps the teacher's score"],
                        [d, "(domain)", "regression", "pass" if ok else "fail", drop, 0.02, rng.random(),
                         "drop vs champion"]]
        verdict = pd.DataFrame(verdict, columns=["domain", "slice", "check", "status", "observed", "threshold",
                                                 "p_value", "reason"])
        failing = sorted(set(verdict.loc[verdict["status"] == "fail", "domain"]))
        gate_id = run("gate", "gate candidate", at + 3000, loop_id,
                      tags={"kdh.verdict": "fail" if failing else "pass", "kdh.failing_domains": ",".join(failing)},
                      metrics=[Metric("gate/passed", float(not failing), at, 0)],
                      params={"candidate.source": f"/loops/{i}/student", "champion.source": "models:/kdh-bench@champion"})
        client.log_dict(gate_id, gate_card.to_json(), "scorecard.json")
        client.log_dict(gate_id, _table(verdict), "tables/verdict.json")
        if not failing:
            previous = version
            mv = client.create_model_version(name, source=f"/loops/{i}/student", run_id=loop_id, tags={
                promotion.PREVIOUS_TAG: str(previous or ""), promotion.FINGERPRINT_TAG: f"{i:064x}",
                promotion.PROMOTED_TAG: time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime((at + 4000) / 1000))})
            version = int(mv.version)
            client.set_registered_model_alias(name, promotion.CHAMPION, str(version))
            champion = candidate
        if (i + 1) % 50 == 0:
            print(f"  seeded {i + 1}/{loops} loops, {created:,} runs", file=sys.stderr, flush=True)
    return created


def measure(uri: str, repeats: int) -> dict:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from dashboards import data

    st.cache_data.clear()
    t0 = time.perf_counter()
    experiment = data.experiments(uri)["experiment_id"].iloc[0]
    runs = data.runs(uri, experiment)
    query = time.perf_counter() - t0
    t0 = time.perf_counter()
    data.runs(uri, experiment)
    query_cached = time.perf_counter() - t0

    sys.argv = ["app.py", "--tracking-uri", uri]
    at = AppTest.from_file(str(ROOT / "dashboards" / "app.py"), default_timeout=300)
    at.run()  # imports (paid once when the server starts) are not part of a view's time
    results = {"runs": len(runs), "query_s": query, "query_cached_s": query_cached, "views": {}}
    for view in VIEWS:
        cold, warm = [], []
        for _ in range(repeats):
            st.cache_data.clear()
            t0 = time.perf_counter()
            at.sidebar.radio(key="view").set_value(view).run()
            cold.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            at.run()
            warm.append(time.perf_counter() - t0)
            assert not at.exception, [e.message for e in at.exception]
        results["views"][view] = (statistics.median(cold), statistics.median(warm))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=400, help="6 runs each (default 400: 2,400 runs)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per view; the median is shown")
    parser.add_argument("--keep", action="store_true", help="keep the store (its URI is printed)")
    args = parser.parse_args()

    from harness import home

    home.configure_environment()
    folder = Path(tempfile.mkdtemp(prefix="kdh-dashboard-bench-"))
    # Seeding commits once per call; in memory (/dev/shm) that is 3-4x faster than on disk. The
    # database then moves to disk, where a real store lives, before anything is timed.
    shm = Path("/dev/shm")
    scratch = Path(tempfile.mkdtemp(prefix="kdh-dashboard-bench-", dir=shm if shm.is_dir() else None))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    try:
        t0 = time.perf_counter()
        created = seed(f"sqlite:///{scratch / 'mlflow.db'}", folder / "artifacts", args.loops)
        seeded = time.perf_counter() - t0
        shutil.move(scratch / "mlflow.db", folder / "mlflow.db")
        result = measure(uri, args.repeats)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\nStore: {created:,} runs ({args.loops} loops) seeded in {seeded:.0f} s · "
          f"run query {result['query_s']:.2f} s uncached, {result['query_cached_s'] * 1000:.0f} ms cached\n")
    print("| view | cold (caches empty) | warm (cached) |\n|---|---:|---:|")
    for view, (cold, warm) in result["views"].items():
        print(f"| {view} | {cold:.2f} s | {warm:.2f} s |")
    if args.keep:
        print(f"\nkept: {uri}")


if __name__ == "__main__":
    main()
