"""The retention-versus-cost frontier of a size sweep (`kdh sweep`, harness/sweep.py; docs/sweep.md):
pure functions of the sweep's table, one row per student, that the dashboard reads too."""

from __future__ import annotations

import pandas as pd

COST = "parameters"  # the frontier's cost axis; size on disk and scoring speed are in the table too
VALUE = "mean_retention"  # the candidate's retention of the teacher's score, averaged over domains


def on_frontier(table: pd.DataFrame, cost: str = COST, value: str = VALUE) -> pd.Series:
    """True for the students no other student beats: none at most as costly with a higher value.
    Among equal costs only the best counts; a NaN value is never on the frontier."""
    order = table.sort_values([cost, value], ascending=[True, False])
    best, marks = float("-inf"), {}
    for index, row in order.iterrows():
        marks[index] = bool(row[value] > best)  # NaN compares False
        if marks[index]:
            best = row[value]
    return pd.Series(marks).reindex(table.index).astype(bool)


def smallest_passing(table: pd.DataFrame, cost: str = COST) -> pd.Series | None:
    """The least costly student whose gate passed (ties: the higher retention), or None."""
    passed = table[table["passed"].astype(bool)]
    if passed.empty:
        return None
    return passed.sort_values([cost, VALUE], ascending=[True, False]).iloc[0]


def summary_line(table: pd.DataFrame) -> str:
    best = smallest_passing(table)
    if best is not None:
        return (f"Smallest student that passes: {best['student']} ({best['parameters']:,} parameters, "
                f"{best['size_mb']:.1f} MB; mean retention {best[VALUE]:.3f}, worst {best['worst_domain']} "
                f"{best['worst_retention']:.3f})")
    largest = table.sort_values(COST).iloc[-1]
    return (f"No student passes the gate. The largest, {largest['student']} ({largest['parameters']:,} parameters), "
            f"fails on {largest['failing'] or 'its checks'}: more steps, more data for those domains, or a larger student")
