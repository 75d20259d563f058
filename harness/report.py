"""Console tables a person reads at a glance (pure: scorecard in, text out)."""

from __future__ import annotations

import math

import pandas as pd

from harness.scorecard import Scorecard, side_by_side

_BAR_WIDTH = 24


def _number(value) -> str:
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def table(frame: pd.DataFrame) -> str:
    """A plain aligned table: text left, numbers right."""
    cells = [[str(c) for c in frame.columns]] + [[_number(v) for v in row] for row in frame.itertuples(index=False)]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    widths = [max(len(row[i]) for row in cells) for i in range(len(frame.columns))]
    lines = []
    for n, row in enumerate(cells):
        parts = [cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(row, widths, numeric)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("─" * w for w in widths))
    return "\n".join(lines)


def retention_bar(retention: float) -> str:
    """A bar for retention in [0, 1] (1 = parity with the teacher); ▶ marks above parity."""
    if math.isnan(retention):
        return "?"
    filled = max(0.0, min(retention, 1.0)) * _BAR_WIDTH
    bar = "█" * int(filled) + ("▌" if filled - int(filled) >= 0.5 else "")
    return bar.ljust(_BAR_WIDTH) + ("▶" if retention > 1.0 else "│")


def scorecard_report(scorecard: Scorecard) -> str:
    models = scorecard.model_names
    out = [f"Scorecard · suite '{scorecard.suite}' · the counting metric of each slice", "",
           table(side_by_side(scorecard.rows, models)), ""]
    domains = scorecard.domains
    others = [m for m in models if m != scorecard.reference]
    if others:
        out.append(f"Retention of {scorecard.reference}'s score per domain (1.00 = parity; "
                   f"student/teacher, or teacher/student where lower is better)")
        out.append("")
        for model in others:
            rows = domains[domains["model"] == model].sort_values("retention")
            width = max(len(d) for d in rows["domain"])
            out.append(f"  {model}")
            for row in rows.itertuples():
                out.append(f"    {row.domain.ljust(width)}  {row.retention:5.2f}  {retention_bar(row.retention)}")
            out.append("")
    eff = scorecard.efficiency.copy()
    eff["size_mb"] = eff.pop("bytes_on_disk") / 2**20
    eff = eff[["model", "parameters", "size_mb", "tokens_per_s", "peak_memory_mb", "seconds"]]
    out += ["Efficiency (scoring)", "", table(eff)]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# The gate's verdict: a console table, JUnit XML (one test case per domain, slice and check) and
# Markdown for CI job summaries and pull-request comments.

_MARK = {"pass": "✔ pass", "fail": "✘ FAIL", "skip": "· skip"}


def _verdict_frame(verdict) -> pd.DataFrame:
    rows = verdict.rows.copy()
    rows.insert(0, "result", rows.pop("status").map(_MARK))
    return rows[["result", "domain", "slice", "check", "observed", "threshold", "p_value", "reason"]]


def verdict_report(verdict) -> str:
    head = (f"Gate · candidate '{verdict.candidate}' vs teacher '{verdict.teacher}'"
            + (f" and champion '{verdict.champion}'" if verdict.champion else " (no champion: regression checks skipped)"))
    if verdict.passed:
        tail = "PASSED: every check holds."
    else:
        tail = f"FAILED: {len(verdict.failures)} check(s) in {', '.join(verdict.failing_domains) or 'no domain'}"
    return "\n".join([head, "", table(_verdict_frame(verdict)), "", tail])


def junit_xml(verdict, suite_name: str) -> str:
    import xml.etree.ElementTree as ET

    rows = verdict.rows
    root = ET.Element("testsuites")
    suite = ET.SubElement(root, "testsuite", name=f"kdh.{suite_name}", tests=str(len(rows)),
                          failures=str(int((rows["status"] == "fail").sum())),
                          skipped=str(int((rows["status"] == "skip").sum())), errors="0")
    for row in rows.itertuples():
        case = ET.SubElement(suite, "testcase", classname=f"kdh.{suite_name}.{row.domain}",
                             name=f"{row.slice}::{row.check}" if row.slice else row.check)
        if row.status == "fail":
            ET.SubElement(case, "failure", message=row.reason, type="GateFailure").text = row.reason
        elif row.status == "skip":
            ET.SubElement(case, "skipped", message=row.reason)
        else:
            ET.SubElement(case, "system-out").text = row.reason
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _md(value) -> str:
    text = _number(value) if not isinstance(value, str) else value
    return text.replace("|", "\\|")


def markdown_summary(verdict, suite_name: str, scorecard=None) -> str:
    icon = "✅" if verdict.passed else "❌"
    lines = [f"## {icon} kdh gate · suite `{suite_name}` · candidate `{verdict.candidate}`", ""]
    if verdict.passed:
        lines.append("Every check holds.")
    else:
        lines.append(f"**Failed** in {', '.join(f'`{d}`' for d in verdict.failing_domains)}:")
        lines.append("")
        lines += [f"- `{r.domain}` {r.slice} **{r.check}**: {r.reason}" for r in verdict.failures.itertuples()]
    if scorecard is not None:
        domains = scorecard.domains
        pivot = domains.pivot(index="domain", columns="model", values="retention")
        models = [m for m in scorecard.model_names if m != scorecard.reference and m in pivot.columns]
        lines += ["", f"### Retention of `{scorecard.reference}`'s score per domain", "",
                  "| domain | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
        lines += [f"| {d} | " + " | ".join(_md(pivot.loc[d, m]) for m in models) + " |" for d in pivot.index]
    lines += ["", "<details><summary>All checks</summary>", "", "| result | domain | slice | check | observed | threshold | p | reason |",
              "|---|---|---|---|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(_md(v) for v in row) + " |" for row in _verdict_frame(verdict).itertuples(index=False)]
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def trends_report(trends: pd.DataFrame | None, recommendations: list[str] | None) -> str:
    """The gate's look ahead for the console: each domain's trend over the champion versions (when
    there is a history to fit) with its alerts, then the recommendations (harness/trends.py,
    harness/recommend.py)."""
    parts = []
    if trends is not None and len(trends) and (trends["points"] > 1).any():
        shown = trends[["domain", "points", "latest", "per_version", "forecast", "floor", "alert"]]
        parts += ["Trends over champion versions (a line through the last versions, and where it leads)", "",
                  table(shown), ""]
        parts += [f"⚠ Trend alert · {r.domain}: {r.reason}" for r in trends.itertuples() if r.alert]
        parts += [""] if trends["alert"].any() else []
    if recommendations:
        parts += ["Recommendations", *[f"  - {line}" for line in recommendations], ""]
    return "\n".join(parts).rstrip()
