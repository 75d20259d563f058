"""Pure transforms from what the store holds to what a view shows: DataFrames in, DataFrames out.

No Streamlit and no MLflow here, so each rule (which model is the student, what "change against the
champion" means, when a domain is sliding) is stated once and can be tested on its own.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.gate import DOMAIN_LEVEL
from harness.scorecard import Scorecard



# --------------------------------------------------------------------------------------------
# Runs


def filter_runs(runs: pd.DataFrame, model: str = "", start=None, end=None) -> pd.DataFrame:
    """Runs whose models (names or sources) contain ``model`` and that started within [start, end]
    (dates, inclusive). A nested run (a loop's eval, distill, gate) is kept with its parent."""
    keep = pd.Series(True, index=runs.index)
    if model:
        keep &= runs["models"].str.contains(model, case=False, regex=False)
    day = runs["start"].dt.tz_convert(None).dt.date
    if start is not None:
        keep &= day >= start
    if end is not None:
        keep &= day <= end
    kept = set(runs.loc[keep, "run_id"])
    return runs[keep | runs["parent"].isin(kept)]


def scored_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished runs that hold a scorecard: evals and gates."""
    return runs[runs["kind"].isin(["eval", "gate"]) & (runs["status"] == "FINISHED")]


def run_labels(runs: pd.DataFrame) -> pd.Series:
    """Unique, readable names for runs: when, kind, name, verdict, short id."""
    verdict = runs["verdict"].map({"pass": " · ✔ pass", "fail": " · ✘ FAIL"}).fillna("")
    return (runs["start"].dt.strftime("%Y-%m-%d %H:%M") + " · " + runs["kind"] + " · " + runs["name"] + verdict
            + " · " + runs["run_id"].str[:8])


# --------------------------------------------------------------------------------------------
# Scorecards


def roles(card: Scorecard) -> dict[str, str | None]:
    """Who is who in a scorecard: the teacher is the reference; a gate's student is "candidate";
    in an eval it is the first model that is neither the reference nor "champion"."""
    names = card.model_names
    others = [m for m in names if m not in (card.reference, "champion")]
    student = "candidate" if "candidate" in names else (others[0] if others else None)
    return {"teacher": card.reference, "champion": "champion" if "champion" in names else None, "student": student}


def verdict_status(verdict: pd.DataFrame | None) -> pd.DataFrame:
    """One row per (domain, slice): fail if any check fails, else pass if any passes, else skip;
    ``reason``: the failing checks' reasons (else every check's)."""
    cols = ["domain", "slice", "verdict", "reason"]
    if verdict is None or verdict.empty:
        return pd.DataFrame(columns=cols)
    out = []
    for (domain, slice_name), group in verdict.groupby(["domain", "slice"], sort=False):
        statuses = set(group["status"])
        status = "fail" if "fail" in statuses else "pass" if "pass" in statuses else "skip"
        reasons = group.loc[group["status"] == "fail", "reason"] if status == "fail" else group["reason"]
        out.append({"domain": domain, "slice": slice_name, "verdict": status,
                    "reason": "; ".join(f"{c}: {r}" for c, r in zip(group.loc[reasons.index, "check"], reasons))})
    return pd.DataFrame(out, columns=cols)


def _retention(card: Scorecard) -> pd.Series:
    return card.domains.set_index(["model", "domain"])["retention"]


def domain_summary(card: Scorecard, verdict: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per domain: the student's retention of the teacher's score, the champion's, the change
    (student − champion, in retention points: negative is a drop), the gate's verdict and why."""
    who = roles(card)
    kept = _retention(card)
    status = verdict_status(verdict)
    status = status[status["slice"] == DOMAIN_LEVEL].set_index("domain")
    rows = []
    for domain in dict.fromkeys(card.rows["domain"]):
        student = kept.get((who["student"], domain), math.nan)
        champion = kept.get((who["champion"], domain), math.nan) if who["champion"] else math.nan
        rows.append({"domain": domain, "retention": student, "champion": champion, "change": student - champion,
                     "verdict": status["verdict"].get(domain, ""), "reason": status["reason"].get(domain, "")})
    return pd.DataFrame(rows, columns=["domain", "retention", "champion", "change", "verdict", "reason"])


def scorecard_table(card: Scorecard, verdict: pd.DataFrame | None = None) -> pd.DataFrame:
    """The scorecard a person reads: per domain, first the domain's own row (slice "(domain)",
    the models' retention of the teacher's score, the teacher at 1.00), then the counting metric of
    each slice with each model's value. ``retention`` and ``change`` are the student's; ``verdict``
    is the gate's for that row (the same (domain, slice) keys as the verdict table)."""
    from harness.scorecard import slice_retention

    who = roles(card)
    models = [m for m in (who["teacher"], who["champion"], who["student"]) if m]
    models += [m for m in card.model_names if m not in models]
    kept = _retention(card)
    status = verdict_status(verdict).set_index(["domain", "slice"])["verdict"]
    primary = card.rows[card.rows["primary"]]
    values = primary.set_index(["model", "domain", "slice"])["value"]
    rows = []
    for domain, group in primary.groupby("domain", sort=False):
        row = {"domain": domain, "slice": DOMAIN_LEVEL, "metric": "retention", "better": "higher"}
        row.update({m: kept.get((m, domain), math.nan) for m in models})
        row.update({f"_{role}": row[who[role]] if who[role] else math.nan for role in ("student", "champion")})
        rows.append(row)
        for item in group.drop_duplicates("slice").itertuples():
            row = {"domain": domain, "slice": item.slice, "metric": item.metric,
                   "better": "higher" if item.higher_is_better else "lower"}
            row.update({m: values.get((m, domain, item.slice), math.nan) for m in models})
            row.update({f"_{role}": slice_retention(row[who[role]], row[who["teacher"]], item.higher_is_better)
                        if who[role] else math.nan for role in ("student", "champion")})
            rows.append(row)
    frame = pd.DataFrame(rows)
    frame["retention"] = frame.pop("_student")
    frame["change"] = frame["retention"] - frame.pop("_champion")
    frame["verdict"] = [status.get((d, s), "") for d, s in zip(frame["domain"], frame["slice"])]
    return frame[["domain", "slice", "metric", "better", *models, "retention", "change", "verdict"]]


def slice_detail(card: Scorecard, domain: str) -> pd.DataFrame:
    """Every metric of a domain's slices, per model: value, ± stderr and n (the drill-down)."""
    rows = card.rows[card.rows["domain"] == domain]
    out = rows[["slice", "metric", "primary", "higher_is_better"]].drop_duplicates(["slice", "metric"])
    out = out.rename(columns={"higher_is_better": "better"}).set_index(["slice", "metric"])
    out["better"] = out["better"].map({True: "higher", False: "lower"})
    for model in card.model_names:
        mine = rows[rows["model"] == model].set_index(["slice", "metric"])
        out[model] = mine["value"]
        out[f"{model} ± stderr"] = mine["stderr"]
        out[f"{model} n"] = mine["n"]
    return out.reset_index()


def efficiency(card: Scorecard) -> pd.DataFrame:
    """Per measure, the models side by side and the student as a share of the teacher."""
    who = roles(card)
    eff = card.efficiency.set_index("model")
    eff["size_mb"] = eff.pop("bytes_on_disk") / 2**20
    measures = {"parameters": "parameters", "size_mb": "size (MB)", "tokens_per_s": "tokens/s (scoring)",
                "peak_memory_mb": "peak memory (MB)"}
    out = eff[list(measures)].T.rename(index=measures)
    out.index.name, out.columns.name = "measure", None
    if who["student"] in out.columns:
        out["student ÷ teacher"] = out[who["student"]] / out[who["teacher"]]
    return out.reset_index()


# --------------------------------------------------------------------------------------------
# Gate and promotions


def champion_since(history: pd.DataFrame) -> tuple[int, str] | None:
    """(version, since when) of the champion: when it was promoted, or later, when a rollback
    moved the alias back to it."""
    holder = history[history["champion"]]
    if holder.empty:
        return None
    version = int(holder["version"].iloc[0])
    times = [holder["promoted_at"].iloc[0]]
    times += list(history.loc[(history["previous_champion"] == str(version)) & (history["rolled_back_at"] != ""),
                              "rolled_back_at"])
    return version, max(t for t in times if t) if any(times) else ""


def champion_events(history: pd.DataFrame) -> pd.DataFrame:
    """When the alias moved: (time, version, event) for each promotion and rollback, in order."""
    events = [{"time": r.promoted_at, "version": r.version, "event": f"v{r.version} promoted"}
              for r in history.itertuples() if r.promoted_at]
    events += [{"time": r.rolled_back_at, "version": int(r.previous_champion),
                "event": f"back to v{r.previous_champion}"}
               for r in history.itertuples() if r.rolled_back_at and r.previous_champion]
    frame = pd.DataFrame(events, columns=["time", "version", "event"])
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    return frame.sort_values("time", ignore_index=True)


# --------------------------------------------------------------------------------------------
# Distillation


def ddk_series(history: pd.DataFrame, what: str) -> pd.DataFrame:
    """``ddk/<what>/<domain>`` metric history (what: weight | ratio) as step, domain, value."""
    prefix = f"ddk/{what}/"
    mine = history[history["key"].str.startswith(prefix)]
    out = pd.DataFrame({"step": mine["step"], "domain": mine["key"].str[len(prefix):], "value": mine["value"]})
    return out.sort_values(["step", "domain"], ignore_index=True)


def training_curves(history: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """step, series, value for the given keys. tokens_per_s also holds the run's overall rate,
    logged after the loop without a step (MLflow's step 0): only the per-step values are a curve."""
    mine = history[history["key"].isin(keys) & ~((history["key"] == "tokens_per_s") & (history["step"] == 0))]
    out = mine.rename(columns={"key": "series"})[["step", "series", "value"]]
    return out.sort_values(["series", "step"], ignore_index=True)


# --------------------------------------------------------------------------------------------
# History and comparison


def retention_history(runs: pd.DataFrame, model: str) -> pd.DataFrame:
    """A model's retention per domain in every eval run that scored it (``<model>/<domain>/retention``,
    logged on the eval's parent run): run_id, name, start, domain, retention; oldest first."""
    evals = scored_runs(runs)
    evals = evals[evals["kind"] == "eval"]
    prefix = f"metrics.{model}/"
    cols = [c for c in runs.columns if c.startswith(prefix) and c.endswith("/retention")]
    long = evals.melt(id_vars=["run_id", "name", "start"], value_vars=cols, var_name="domain", value_name="retention")
    long["domain"] = long["domain"].str[len(prefix):-len("/retention")]
    return long.dropna(subset=["retention"]).sort_values(["start", "domain"], ignore_index=True)


def scored_models(runs: pd.DataFrame) -> list[str]:
    """Models with a retention history, students first (the references are 1.00 throughout)."""
    refs = set(runs["reference"].dropna())
    names = sorted({c.split(".", 1)[1].split("/")[0] for c in runs.columns
                    if c.startswith("metrics.") and c.endswith("/retention") and c.count("/") == 2})
    return [n for n in names if n not in refs] + [n for n in names if n in refs]


def slide(history: pd.DataFrame, floors: dict[str, float] | None = None, last: int = 5) -> pd.DataFrame:
    """Per domain: latest retention, its change per run over the last ``last`` runs (a least-squares
    slope), the gate's floor, and at that pace how many runs until the floor is crossed.
    A slow slide shows here while each single gate still passes."""
    floors = floors or {}
    rows = []
    for domain, group in history.groupby("domain", sort=False):
        values = group["retention"].to_numpy()[-last:]
        slope = float(np.polyfit(np.arange(len(values)), values, 1)[0]) if len(values) >= 2 else math.nan
        floor = floors.get(domain, math.nan)
        latest = float(values[-1])
        sliding = slope < -1e-6  # below that it is the fit's rounding, not a slide
        runs_left = (latest - floor) / -slope if sliding and latest >= floor else math.nan
        rows.append({"domain": domain, "latest": latest, "per run": slope, "floor": floor,
                     "runs to floor": runs_left, "runs": len(group)})
    return pd.DataFrame(rows, columns=["domain", "latest", "per run", "floor", "runs to floor", "runs"])


def floors(verdict: pd.DataFrame | None) -> dict[str, float]:
    """The gate's domain-level retention thresholds, from a verdict table."""
    if verdict is None or verdict.empty:
        return {}
    mine = verdict[(verdict["slice"] == DOMAIN_LEVEL) & (verdict["check"] == "retention")]
    return {r.domain: float(r.threshold) for r in mine.itertuples() if not pd.isna(r.threshold)}


def compare(a: Scorecard, b: Scorecard) -> pd.DataFrame:
    """Domain by domain: the student's retention in run A and in run B, and B − A."""
    ka, kb = _retention(a), _retention(b)
    sa, sb = roles(a)["student"], roles(b)["student"]
    domains = list(dict.fromkeys([*a.rows["domain"], *b.rows["domain"]]))
    frame = pd.DataFrame({"domain": domains,
                          "A": [ka.get((sa, d), math.nan) for d in domains],
                          "B": [kb.get((sb, d), math.nan) for d in domains]})
    frame["B − A"] = frame["B"] - frame["A"]
    return frame


def compare_slices(a: Scorecard, b: Scorecard) -> pd.DataFrame:
    """The counting metric of each slice for each run's student, and B − A in the metric's units."""
    def values(card):
        student = roles(card)["student"]
        rows = card.rows[card.rows["primary"] & (card.rows["model"] == student)]
        return rows.set_index(["domain", "slice", "metric"])["value"]

    va, vb = values(a), values(b)
    frame = pd.concat({"A": va, "B": vb}, axis=1).reset_index()
    frame["B − A"] = frame["B"] - frame["A"]
    return frame
