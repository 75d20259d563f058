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
