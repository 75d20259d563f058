"""`kdh sweep`: students of several sizes through the loop's steps (DDK distillation, then the gate),
the retention-versus-cost frontier, and the smallest student that passes (docs/sweep.md).

A students file lists the sizes. An entry with ``config`` changes the base student's config.json
(layers, width, …) and starts from random weights, seeded; an entry with ``path`` starts from a
model folder as it is (a pretrained checkpoint of that size). Every student is distilled with the
same settings from the same token store and gated against the teacher with the suite's thresholds;
no champion is involved (a sweep compares sizes, it promotes nothing).

The frontier and the smallest passing student are pure functions of the sweep's table (harness/frontier.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from harness.errors import BadInput
from harness.frontier import COST, VALUE, on_frontier, smallest_passing


@dataclass(frozen=True)
class StudentSpec:
    name: str
    config: dict = field(default_factory=dict)  # overrides of the base student's config (random init) …
    path: str | None = None  # … or a model folder to start from as it is

    def describe(self) -> str:
        if self.path:
            return f"from {self.path}"
        return ", ".join(f"{k}={v}" for k, v in self.config.items()) or "the base student's shape"


def load_students(path: Path) -> list[StudentSpec]:
    """The students file: ``students: [{name, config: {...}} | {name, path: DIR}, ...]``, or bad input
    naming the file and the entry."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise BadInput(f"--students {path}: cannot be read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise BadInput(f"--students {path}: not YAML ({err})") from None
    entries = data.get("students") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise BadInput(f"--students {path}: expected a list under 'students:' (each entry a name with a config or a path)")
    specs, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"--students {path}, entry {i + 1}"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise BadInput(f"{where}: each entry needs a 'name'")
        name = entry["name"].strip()
        if name in seen:
            raise BadInput(f"{where}: the name '{name}' is used twice; names label the results")
        seen.add(name)
        unknown = sorted(set(entry) - {"name", "config", "path"})
        if unknown:
            raise BadInput(f"{where} ('{name}'): unknown key(s) {', '.join(unknown)}; an entry has name, and config or path")
        if ("config" in entry) == ("path" in entry):
            raise BadInput(f"{where} ('{name}'): give either 'config' (changes to the base student's config.json) or "
                           "'path' (a model folder), not both or neither")
        config = entry.get("config") or {}
        if not isinstance(config, dict):
            raise BadInput(f"{where} ('{name}'): 'config' must be a mapping of config.json keys to values")
        raw = entry.get("path")
        folder = None if raw is None else (Path(path).parent / str(raw)).resolve()
        if folder is not None and not (folder / "config.json").is_file():
            raise BadInput(f"{where} ('{name}'): {folder} holds no config.json; give a model folder")
        specs.append(StudentSpec(name, dict(config), None if folder is None else str(folder)))
    return specs


def initial_student(spec: StudentSpec, base_dir: str, out: Path, seed: int) -> Path:
    """The folder a student's distillation starts from: its ``path``, or the base student's config
    with the entry's changes, random weights (seeded) and the base student's tokenizer."""
    if spec.path:
        return Path(spec.path)
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
        GenerationConfig,
    )

    from distiller.files import write_atomic_folder

    config = AutoConfig.from_pretrained(base_dir)
    unknown = sorted(k for k in spec.config if not hasattr(config, k))
    if unknown:
        raise BadInput(f"student '{spec.name}': {', '.join(unknown)} not in {base_dir}/config.json "
                       f"({type(config).__name__}); use that file's keys")
    for key, value in spec.config.items():
        setattr(config, key, value)
    try:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        with torch.no_grad():  # shapes that only clash in a forward pass (e.g. heads and key-value heads)
            model(torch.zeros(1, 2, dtype=torch.long))
    except (ValueError, RuntimeError, TypeError, AssertionError) as err:
        raise BadInput(f"student '{spec.name}': the config {spec.describe()} does not make a working model "
                       f"({str(err).splitlines()[0][:200]}); check its sizes") from None

    def fill(folder: Path) -> None:
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(folder)
        if (Path(base_dir) / "generation_config.json").is_file():
            GenerationConfig.from_pretrained(base_dir).save_pretrained(folder)

    return write_atomic_folder(out, fill)


# --------------------------------------------------------------------------------------------
# A student's line in the table


def student_row(spec: StudentSpec, scorecard, verdict, tokens_per_s: float) -> dict:
    """One line of the sweep's table from the candidate's gate: costs, retention, verdict."""
    eff = scorecard.efficiency.set_index("model").loc["candidate"]
    retention = scorecard.domains.query("model == 'candidate'").set_index("domain")["retention"]
    worst = retention.idxmin() if retention.notna().any() else ""
    return {"student": spec.name, "start": spec.describe(), "parameters": int(eff["parameters"]),
            "size_mb": float(eff["bytes_on_disk"]) / 2**20, "scoring_tokens_per_s": float(eff["tokens_per_s"]),
            "distill_tokens_per_s": float(tokens_per_s), VALUE: float(retention.mean()),
            "worst_domain": worst, "worst_retention": float(retention.min()), "passed": bool(verdict.passed),
            "failing": ", ".join(verdict.failing_domains),
            **{f"retention/{d}": float(v) for d, v in retention.items()}}


# --------------------------------------------------------------------------------------------
# The sweep (input and output: models, MLflow)


@dataclass
class SweepOutcome:
    table: pd.DataFrame
    run_id: str
    exit_code: int


def run_sweep(suite, teacher, base_student: str, specs: list[StudentSpec], settings, options, out: Path) -> SweepOutcome:
    """Distil each student with DDK (``settings``: a harness.loop.LoopSettings), gate it against the
    teacher, and log the table, the frontier and the smallest passing student under a ``sweep`` run."""
    import mlflow

    from harness import corpora, steps, tracking
    from harness.console import note, say
    from harness.errors import EXIT_GATE_FAILED, EXIT_PASS
    from harness.report import verdict_report

    # Every student is made first: a config that makes no working model is bad input before any training.
    starts = {spec.name: initial_student(spec, base_student, out / spec.name / "init", settings.seed) for spec in specs}
    rows, contamination = [], {}
    with tracking.tracked_run(suite.name, "sweep", f"sweep {len(specs)} students") as run:
        mlflow.log_params({"suite": suite.name, "teacher": teacher.source, "base_student": base_student,
                           "students": ", ".join(s.name for s in specs),
                           **{f"sweep.{k}": v for k, v in vars(settings).items() if k not in ("rounds", "promote")}})
        for number, spec in enumerate(specs, 1):
            say(f"\n━━ Student {number}/{len(specs)}: {spec.name} ({spec.describe()})")
            folder, start = out / spec.name, starts[spec.name]
            store = settings.store or corpora.store_for(suite, str(start)).root
            if store not in contamination:  # one scan per token store: students of one tokenizer share it
                contamination[store] = corpora.contamination(suite, store, str(start))
            note(f"  distilling with DDK, {settings.steps} steps …")
            config = settings.distill_config(teacher.source, str(start), folder / "distill")
            distilled = steps.distill(suite, config, f"distill {spec.name}", params={"sweep.student": spec.name},
                                      store=store)
            note("  gating it against the teacher …")
            # The candidate loads as the teacher does (dtype, device, what it may trust).
            candidate = replace(teacher, name="candidate", source=str(distilled.result.student_dir))
            outcome = steps.gate(suite, teacher, candidate, None, options, folder / "gate",
                                 contamination=contamination[store])
            say(verdict_report(outcome.verdict))
            rows.append(student_row(spec, outcome.scorecard, outcome.verdict, distilled.result.tokens_per_s))
        table = pd.DataFrame(rows)
        table["on_frontier"] = on_frontier(table)
        best = smallest_passing(table)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "sweep.csv", index=False)
        mlflow.log_artifact(str(out / "sweep.csv"))
        mlflow.log_table(table, artifact_file="tables/sweep.json")
        mlflow.log_metrics({f"sweep/{r.student}/{m}": float(getattr(r, m)) for r in table.itertuples()
                            for m in (COST, VALUE, "worst_retention", "passed")})
        mlflow.set_tags({"kdh.smallest_passing": "" if best is None else best["student"],
                         "kdh.verdict": "pass" if best is not None else "fail"})
    return SweepOutcome(table, run.info.run_id, EXIT_PASS if best is not None else EXIT_GATE_FAILED)
