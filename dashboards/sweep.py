"""The Sweep view: the students of a `kdh sweep` run on the retention-versus-cost plane, the frontier
through the ones no smaller student beats, and the smallest that passes the gate (docs/sweep.md)."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboards import charts, data, views
from harness import frontier


def frontier_chart(table: pd.DataFrame) -> alt.LayerChart:
    """Each student at (parameters, mean retention), green if its gate passed, red if not, named; the
    frontier drawn through its students; the smallest passing student ringed."""
    frame = table.assign(verdict=table["passed"].map({True: "pass", False: "fail"}))
    x = alt.X(f"{frontier.COST}:Q", title="parameters (log scale)", scale=alt.Scale(type="log", nice=False, padding=30))
    y = alt.Y(f"{frontier.VALUE}:Q", title="mean retention of the teacher's score", scale=alt.Scale(zero=False, padding=20))
    points = alt.Chart(frame).mark_circle(size=160, opacity=1).encode(
        x=x, y=y, color=alt.Color("verdict:N", scale=alt.Scale(domain=["pass", "fail"], range=[charts.PASS, charts.FAIL]),
                                  title="gate", legend=alt.Legend(orient="bottom")),
        tooltip=["student", "start", alt.Tooltip(f"{frontier.COST}:Q", format=","), alt.Tooltip("size_mb:Q", format=".2f"),
                 alt.Tooltip(f"{frontier.VALUE}:Q", format=".3f"), "worst_domain",
                 alt.Tooltip("worst_retention:Q", format=".3f"), "failing"])
    names = alt.Chart(frame).mark_text(align="left", dx=10, dy=-8, fontWeight="bold").encode(x=x, y=y, text="student:N")
    line = alt.Chart(frame[frame["on_frontier"]].sort_values(frontier.COST)).mark_line(
        color="#616161", strokeDash=[5, 4]).encode(x=x, y=y)
    layers = line + points + names
    best = frontier.smallest_passing(table)
    if best is not None:
        ring = alt.Chart(pd.DataFrame([best])).mark_point(size=600, color=charts.PASS, strokeWidth=2).encode(x=x, y=y)
        layers += ring
    return layers.properties(title="Retention versus cost: the frontier (dashed), the smallest passing student (ringed)",
                             height=380)


def view(ctx: views.Context) -> None:
    st.header("Sweep")
    runs = ctx.runs[(ctx.runs["kind"] == "sweep") & (ctx.runs["status"] == "FINISHED")]
    if runs.empty:
        st.info("No finished sweep run matches the filters. `kdh sweep` distils and gates students of several sizes.")
        return
    run_id = views._pick_run(runs, "Sweep run", "sweep_run")
    table = data.table(ctx.uri, run_id, "tables/sweep.json")
    table["passed"] = table["passed"].astype(bool)
    table["on_frontier"] = table["on_frontier"].astype(bool)
    best = frontier.smallest_passing(table)
    if best is not None:
        st.success(f"**Smallest passing student: {best['student']}** · {best[frontier.COST]:,} parameters "
                   f"({best['size_mb']:.2f} MB) · mean retention {best[frontier.VALUE]:.3f}")
    else:
        st.error(f"**No student passes.** {frontier.summary_line(table)}")
    st.altair_chart(frontier_chart(table), width="stretch")
    shown = table.sort_values(frontier.COST).assign(gate=lambda f: f["passed"].map({True: "pass", False: "fail"}))
    columns = ["student", "start", frontier.COST, "size_mb", frontier.VALUE, "worst_domain", "worst_retention", "gate",
               "failing", "on_frontier", "distill_tokens_per_s", "scoring_tokens_per_s"]
    views._show(shown[columns], "sweep", views._coloured(shown[columns], "gate"))
    retention = shown.filter(like="retention/").set_axis(
        [c.split("/", 1)[1] for c in shown.filter(like="retention/").columns], axis=1)
    st.caption("Retention per domain (the gate checks each against the suite's floor):")
    views._show(pd.concat([shown[["student"]], retention], axis=1), "sweep_domains",
                pd.concat([shown[["student"]], retention], axis=1).style.format(precision=3))
