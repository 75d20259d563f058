"""Scorecards: the tidy table of results, and the per-domain arithmetic over it (pure).

One row per (model, domain, slice, metric): value, stderr, n, higher_is_better, and whether the
metric is the one the slice counts (``primary``).

Per-domain aggregate, comparable across metrics of both directions: **retention** of the
reference model's (the teacher's) score. For a slice whose metric is better when higher it is
``student / teacher``; when lower is better (bits per byte, perplexity) it is ``teacher /
student``. Either way 1.0 is parity, below 1 the student is worse, above 1 it is better. A
domain's retention is the slice-weighted mean of its slices' retentions; its **gap** is
``1 - retention`` (positive where the student lags), which is what DDK's sampling weights use.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

ROW_COLUMNS = ["model", "domain", "slice", "metric", "value", "stderr", "n", "higher_is_better", "primary", "weight"]
DOMAIN_COLUMNS = ["model", "domain", "retention", "gap", "slices"]
EFFICIENCY_COLUMNS = ["model", "parameters", "bytes_on_disk", "tokens_per_s", "peak_memory_mb", "seconds"]
# Per document, for each slice's counting metric: what paired tests need (harness/metrics.py,
# ``from_sums``). ``doc_hash`` is lm-eval's hash of the document: two models were scored on the
# same items only if their hashes agree.
SAMPLE_COLUMNS = ["model", "domain", "slice", "metric", "doc_id", "doc_hash", "value", "weight"]
# Per (model, domain, slice): agreement with the reference and calibration (harness/agreement.py).
AGREEMENT_COLUMNS = ["model", "domain", "slice", "method", "documents", "positions", "top1_agreement", "kl_bits",
                     "js_bits", "ece", "reference_ece"]
# Per item, each model's answer beside the true one (harness/scoring.py ``_answer``): side-by-side reading.
ITEM_COLUMNS = ["model", "domain", "slice", "metric", "doc_id", "prompt", "gold", "answer", "value", "weight"]
DOMAIN_AGREEMENT_COLUMNS = ["model", "domain", "positions", "top1_agreement", "kl_bits", "js_bits", "ece",
                            "reference_ece"]
# JSON has no NaN: a missing stderr comes back as null, so reading restores the types.
_ROW_TYPES = {"value": float, "stderr": float, "n": int, "higher_is_better": bool, "primary": bool, "weight": float}


def slice_retention(value: float, reference: float, higher_is_better: bool) -> float:
    """The share of the reference's score kept; NaN where it is undefined (a zero or NaN)."""
    num, den = (value, reference) if higher_is_better else (reference, value)
    if den == 0 or any(map(math.isnan, (num, den))):
        return math.nan
    return num / den


def domain_aggregates(rows: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per (model, domain) retention and gap against the reference model (see module doc)."""
    primary = rows[rows["primary"]]
    ref = primary[primary["model"] == reference].set_index(["domain", "slice"])["value"]
    out = []
    for (model, domain), group in primary.groupby(["model", "domain"], sort=False):
        kept, weights = [], []
        for row in group.itertuples():
            ref_value = ref.get((domain, row.slice), math.nan)
            kept.append(slice_retention(row.value, ref_value, bool(row.higher_is_better)))
            weights.append(row.weight)
        retention = sum(k * w for k, w in zip(kept, weights)) / sum(weights)
        out.append({"model": model, "domain": domain, "retention": retention,
                    "gap": 1.0 - retention, "slices": len(kept)})
    return pd.DataFrame(out, columns=DOMAIN_COLUMNS)


def domain_agreement(agreement: pd.DataFrame) -> pd.DataFrame:
    """Per (model, domain): its slices' agreement figures weighted by the positions compared."""
    out = []
    for (model, domain), group in agreement.groupby(["model", "domain"], sort=False):
        weights = group["positions"].astype(float)
        row = {"model": model, "domain": domain, "positions": int(weights.sum())}
        for column in DOMAIN_AGREEMENT_COLUMNS[3:]:
            values = group[column].astype(float)
            ok = values.notna() & (weights > 0)
            row[column] = float((values[ok] * weights[ok]).sum() / weights[ok].sum()) if ok.any() else math.nan
        out.append(row)
    return pd.DataFrame(out, columns=DOMAIN_AGREEMENT_COLUMNS)


def item_comparison(items: pd.DataFrame, a: str, b: str, domain: str, slice_name: str) -> pd.DataFrame:
    """One slice's items, model ``a`` beside model ``b``: the prompt's end, the true answer, each
    model's answer and its per-item score in the slice's metric; ``differs`` where the answers differ
    (or, for a slice without answers such as perplexity, where the scores do), largest gap first."""
    from harness.metrics import from_sums

    mine = items[(items["domain"] == domain) & (items["slice"] == slice_name)]
    left = mine[mine["model"] == a].set_index("doc_id")
    right = mine[mine["model"] == b].set_index("doc_id")
    docs = left.index.intersection(right.index)
    left, right = left.loc[docs], right.loc[docs]
    metric = str(left["metric"].iloc[0]) if len(left) else ""
    out = pd.DataFrame({"doc_id": docs, "prompt": left["prompt"].to_numpy(), "gold": left["gold"].to_numpy(),
                        f"{a} answer": left["answer"].to_numpy(), f"{b} answer": right["answer"].to_numpy(),
                        f"{a} {metric}": from_sums(metric, left["value"], left["weight"]),
                        f"{b} {metric}": from_sums(metric, right["value"], right["weight"])})
    answered = out[f"{a} answer"].fillna("").astype(str).str.len().gt(0)
    gap = (out[f"{a} {metric}"] - out[f"{b} {metric}"]).abs()
    out["differs"] = (out[f"{a} answer"] != out[f"{b} answer"]).where(answered, gap > 1e-9)
    return out.assign(gap=gap).sort_values(["differs", "gap"], ascending=False).drop(columns="gap").reset_index(drop=True)


def side_by_side(rows: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """The primary metric of each slice, one column per model: the table a person reads."""
    primary = rows[rows["primary"]]
    table = primary.pivot_table(index=["domain", "slice", "metric"], columns="model", values="value", sort=False)
    table = table[[m for m in models if m in table.columns]]
    direction = primary.drop_duplicates(["domain", "slice"]).set_index(["domain", "slice", "metric"])["higher_is_better"]
    table.insert(0, "better", direction.reindex(table.index).map({True: "higher", False: "lower"}))
    return table.reset_index()


@dataclass
class Scorecard:
    suite: str
    reference: str
    rows: pd.DataFrame
    efficiency: pd.DataFrame
    models: dict[str, dict] = field(default_factory=dict)  # per model: source, fingerprint, …
    suite_fingerprint: str = ""
    samples: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SAMPLE_COLUMNS))
    agreement: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=AGREEMENT_COLUMNS))
    items: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ITEM_COLUMNS))

    @property
    def model_names(self) -> list[str]:
        return list(dict.fromkeys(self.rows["model"]))

    @property
    def domains(self) -> pd.DataFrame:
        return domain_aggregates(self.rows, self.reference)

    @property
    def agreement_domains(self) -> pd.DataFrame:
        return domain_agreement(self.agreement)

    def to_json(self) -> dict:
        return {
            "suite": self.suite, "suite_fingerprint": self.suite_fingerprint, "reference": self.reference,
            "definition": "retention = student/teacher (higher is better) or teacher/student (lower is "
                          "better), slice-weighted mean per domain; gap = 1 - retention",
            "models": self.models,
            "rows": _records(self.rows), "domains": _records(self.domains), "efficiency": _records(self.efficiency),
            "agreement": _records(self.agreement),
        }

    def save(self, folder: Path) -> dict[str, Path]:
        """scorecard.csv (the tidy rows), domains.csv, efficiency.csv, samples.csv (per document),
        scorecard.json (all but the samples and items), and where there are any, agreement.csv (with
        the reference, per slice) and items.csv (each model's answer per item)."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = {name: folder / name
                 for name in ("scorecard.csv", "domains.csv", "efficiency.csv", "samples.csv", "scorecard.json")}
        for name, frame in (("agreement.csv", self.agreement), ("items.csv", self.items)):
            if len(frame):  # measured only where there is a reference to agree with, answers only where scored
                paths[name] = folder / name
                frame.to_csv(paths[name], index=False)
        self.samples.to_csv(paths["samples.csv"], index=False)
        self.rows.to_csv(paths["scorecard.csv"], index=False)
        self.domains.to_csv(paths["domains.csv"], index=False)
        self.efficiency.to_csv(paths["efficiency.csv"], index=False)
        paths["scorecard.json"].write_text(json.dumps(self.to_json(), indent=2, allow_nan=True))
        return paths

    @classmethod
    def load(cls, path: Path) -> Scorecard:
        """From scorecard.json (or its folder); samples.csv beside it, when there, comes along.
        Anything that is not a kdh scorecard is ``BadInput`` naming the file and what is wrong."""
        from harness.errors import BadInput

        path = Path(path)
        path = path / "scorecard.json" if path.is_dir() else path
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, found {type(data).__name__}")
            missing = [k for k in ("suite", "reference", "rows", "efficiency") if k not in data]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
            rows = _typed(pd.DataFrame(data["rows"], columns=ROW_COLUMNS), "rows")
            efficiency = pd.DataFrame(data["efficiency"], columns=EFFICIENCY_COLUMNS)
            efficiency[EFFICIENCY_COLUMNS[1:]] = efficiency[EFFICIENCY_COLUMNS[1:]].astype(float)
            models = data.get("models", {})
            if not isinstance(models, dict) or not all(isinstance(v, dict) for v in models.values()):
                raise ValueError("`models` must map each model to its provenance")
            samples = _read_samples(path.parent / "samples.csv")
            # scorecards written before agreement was measured have none: an empty table
            agreement = pd.DataFrame(data.get("agreement") or [], columns=AGREEMENT_COLUMNS).astype(
                {c: float for c in AGREEMENT_COLUMNS[6:]})
            items = read_items(path.parent / "items.csv")
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            raise BadInput(f"{path}: not a readable kdh scorecard ({type(err).__name__}: {err}); "
                           "give the scorecard.json that `kdh eval` or `kdh gate` wrote") from None
        return cls(suite=str(data["suite"]), reference=str(data["reference"]), rows=rows, efficiency=efficiency,
                   models=models, suite_fingerprint=str(data.get("suite_fingerprint", "")), samples=samples,
                   agreement=agreement, items=items)


def _typed(rows: pd.DataFrame, what: str) -> pd.DataFrame:
    """The rows with their types checked, not coerced: a list where a name belongs, or the text
    "false" where a boolean belongs, is an error rather than a silent wrong value."""
    for column in ("model", "domain", "slice", "metric"):
        if not rows[column].map(lambda v: isinstance(v, str)).all():
            raise ValueError(f"{what}: `{column}` must be text in every row")
    for column in ("higher_is_better", "primary"):
        if not rows[column].map(lambda v: isinstance(v, bool)).all():
            raise ValueError(f"{what}: `{column}` must be true or false in every row")
    for column in ("value", "stderr", "n", "weight"):
        if not rows[column].map(lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))).all():
            raise ValueError(f"{what}: `{column}` must be a number in every row")
    return rows.astype(_ROW_TYPES)


def _read_samples(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=SAMPLE_COLUMNS)
    samples = pd.read_csv(path, dtype={"doc_hash": str}, keep_default_na=False,
                          na_values={"value": ["", "NaN"], "weight": ["", "NaN"]})
    missing = [c for c in SAMPLE_COLUMNS if c not in samples.columns]
    if missing:
        raise ValueError(f"{path.name} lacks the column(s) {', '.join(missing)}")
    return samples[SAMPLE_COLUMNS].astype({"value": float, "weight": float, "doc_id": int})


def read_items(path: Path) -> pd.DataFrame:
    """items.csv (empty where a scorecard has none); answers and prompts stay text."""
    if not path.is_file():
        return pd.DataFrame(columns=ITEM_COLUMNS)
    items = pd.read_csv(path, dtype={c: str for c in ("prompt", "gold", "answer")}, keep_default_na=False,
                        na_values={"value": ["", "NaN"], "weight": ["", "NaN"]})
    missing = [c for c in ITEM_COLUMNS if c not in items.columns]
    if missing:
        raise ValueError(f"{path.name} lacks the column(s) {', '.join(missing)}")
    return items[ITEM_COLUMNS].astype({"value": float, "weight": float, "doc_id": int})


def _records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))
