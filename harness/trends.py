"""Trends: each domain's retention over the champion versions, a forecast, and an alert before a
domain crosses its floor.

The forecast is an ordinary least-squares line through the last ``WINDOW`` points (versions are
equally spaced: x = 0, 1, 2, …), extended ``HORIZON`` versions ahead. A domain **alerts** when it
still holds its floor (the gate's ``min_retention``) but the line reaches below the floor within the
horizon: it is on course to fail a gate soon while every gate so far has passed. Fewer than
``MIN_POINTS`` points make no forecast: two points are a line through noise. A domain already below
its floor does not alert: the gate fails it now. docs/analytics.md shows the rule on examples.

``trend_table`` is pure (records in, records out); ``champion_history`` reads the MLflow registry and
the gate runs that passed each version.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

WINDOW = 5  # points the line is fitted to: recent enough to turn with the data, enough to damp noise
HORIZON = 3  # versions ahead an alert looks
MIN_POINTS = 3
HISTORY_COLUMNS = ["version", "domain", "retention"]
TREND_COLUMNS = ["domain", "points", "latest", "per_version", "forecast", "floor", "versions_to_floor", "alert",
                 "reason"]


def linear_fit(values) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line through (0, v0), (1, v1), …"""
    y = np.asarray(values, dtype=float)
    x = np.arange(len(y), dtype=float)
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    return slope, float(y.mean() - slope * x.mean())


def trend(values, floor: float, window: int = WINDOW, horizon: int = HORIZON) -> dict:
    """One domain's trend: the fitted change per version, the forecast ``horizon`` versions after
    the latest, how many versions until the line meets the floor, and whether that is an alert."""
    values = [float(v) for v in values if not math.isnan(float(v))]
    latest = values[-1] if values else math.nan
    out = {"points": len(values), "latest": latest, "per_version": math.nan, "forecast": math.nan, "floor": floor,
           "versions_to_floor": math.nan, "alert": False}
    if len(values) < MIN_POINTS:
        return out | {"reason": f"{len(values)} point(s): a forecast needs {MIN_POINTS}"}
    recent = values[-window:]
    slope, intercept = linear_fit(recent)
    fitted_latest = intercept + slope * (len(recent) - 1)
    out |= {"per_version": slope, "forecast": fitted_latest + slope * horizon}
    if math.isnan(floor):
        return out | {"reason": "no floor (min_retention) to forecast against"}
    if latest < floor:
        return out | {"reason": f"already below its floor ({latest:.3f} < {floor:.3f}): the gate fails it"}
    if slope >= 0:
        return out | {"reason": f"not falling ({slope:+.3f} per version)"}
    out["versions_to_floor"] = max(0.0, (fitted_latest - floor) / -slope)
    if out["forecast"] < floor:
        return out | {"alert": True, "reason": f"falls {-slope:.3f} per version: forecast {out['forecast']:.3f} "
                                               f"< floor {floor:.3f} within {horizon} versions "
                                               f"(about {out['versions_to_floor']:.1f} to go)"}
    return out | {"reason": f"falls {-slope:.3f} per version; the floor is {out['versions_to_floor']:.1f} "
                            f"versions away, beyond {horizon}"}


def trend_table(history: pd.DataFrame, floors: dict[str, float], window: int = WINDOW,
                horizon: int = HORIZON) -> pd.DataFrame:
    """Per domain of ``history`` (HISTORY_COLUMNS, in version order): its trend against its floor."""
    rows = [{"domain": domain, **trend(group["retention"], floors.get(domain, math.nan), window, horizon)}
            for domain, group in history.groupby("domain", sort=False)]
    return pd.DataFrame(rows, columns=TREND_COLUMNS)


def alerts(table: pd.DataFrame) -> list[str]:
    """One line per alerting domain."""
    return [f"{r.domain}: {r.reason}" for r in table.itertuples() if r.alert]


def markdown(table: pd.DataFrame) -> str:
    """The trend section of a gate summary (harness/steps.py appends it)."""
    if table.empty:
        return ""
    lines = ["### Trends over champion versions", ""]
    lines += [f"- ⚠️ **{line}**" for line in alerts(table)] or ["No domain is on course to cross its floor."]
    lines += ["", "| domain | points | latest | per version | forecast | floor | note |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in table.itertuples():
        cells = [f"{v:.3f}" if not math.isnan(v) else "—" for v in (r.latest, r.per_version, r.forecast, r.floor)]
        lines.append(f"| {r.domain} | {r.points} | " + " | ".join(cells) + f" | {r.reason} |")
    return "\n".join(lines + ["", ""])


# --------------------------------------------------------------------------------------------
# Reading the history (MLflow)


def champion_history(suite_name: str) -> pd.DataFrame:
    """Each registered version of ``kdh-<suite>``, oldest first, with the candidate's retention per
    domain in the newest gate run that passed it (HISTORY_COLUMNS; versions without one are left out)."""
    import mlflow

    from harness import promotion

    versions = promotion.history(promotion.registered_name(suite_name)).sort_values("version")
    rows = []
    for version in versions.itertuples():
        if not version.fingerprint:
            continue
        runs = mlflow.search_runs(experiment_names=[f"kdh/{suite_name}"], output_format="list", max_results=1,
                                  filter_string="tags.`kdh.kind` = 'gate' and tags.`kdh.verdict` = 'pass' and "
                                                f"params.`candidate.fingerprint` = '{version.fingerprint}'",
                                  order_by=["attributes.start_time DESC"])
        if not runs:
            continue
        table = mlflow.artifacts.load_dict(f"{runs[0].info.artifact_uri.rstrip('/')}/tables/domains.json")
        domains = pd.DataFrame(table["data"], columns=table["columns"])
        rows += [{"version": int(version.version), "domain": r.domain, "retention": float(r.retention)}
                 for r in domains[domains["model"] == "candidate"].itertuples()]
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)
