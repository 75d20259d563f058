"""The five views. Each takes the session's Context and draws with Streamlit; the numbers come from
dashboards/tables.py and the charts from dashboards/charts.py, so what is drawn here is layout."""

from __future__ import annotations

import math
from dataclasses import dataclass

import altair as alt
import pandas as pd
import streamlit as st

from dashboards import charts, data, tables

ROW_COLOURS = {"fail": "background-color: #fdecea", "pass": "background-color: #edf7ee"}
MARK = {"pass": ":green[✔ pass]", "fail": ":red[✘ FAIL]", "skip": ":gray[· skip]", "": ""}


@dataclass
class Context:
    uri: str
    suite: str
    runs: pd.DataFrame  # the suite's runs, filtered by the sidebar
    colours: alt.Scale  # one colour per domain, the same in every chart


def _coloured(frame: pd.DataFrame, column: str, digits: str = "{:.3f}"):
    """Rows tinted by pass/fail, numbers rounded for reading (the data keeps full precision)."""
    numeric = [c for c in frame.columns if pd.api.types.is_float_dtype(frame[c])]
    style = frame.style.format({c: digits for c in numeric}, na_rep="—")
    return style.apply(lambda row: [ROW_COLOURS.get(row[column], "")] * len(row), axis=1)


def _show(frame: pd.DataFrame, key: str, style=None, rows: int = 20) -> None:
    """A table tall enough for ``rows`` rows without scrolling; missing values read "—"."""
    st.dataframe(frame.style if style is None else style, hide_index=True, key=key, placeholder="—",
                 height=35 * (min(len(frame), rows) + 1) + 3)


def _times(frame: pd.DataFrame) -> pd.DataFrame:
    """Timestamps to the second, in UTC, for tables."""
    return frame.assign(**{c: frame[c].dt.strftime("%Y-%m-%d %H:%M:%S") for c in frame.columns
                           if pd.api.types.is_datetime64_any_dtype(frame[c])})


def _pick_run(runs: pd.DataFrame, label: str, key: str, default: int = 0) -> str:
    """A run chosen by its label (time, kind, name, verdict, short id: unique and readable)."""
    ids = dict(zip(tables.run_labels(runs), runs["run_id"]))
    return ids[st.selectbox(label, list(ids), index=min(default, len(ids) - 1), key=key)]


def _load(ctx: Context, run_id: str):
    """A run's scorecard and, for a gate run, its verdict."""
    card = data.scorecard(ctx.uri, run_id)
    kind = ctx.runs.loc[ctx.runs["run_id"] == run_id, "kind"]
    verdict = data.table(ctx.uri, run_id, "tables/verdict.json") if (kind == "gate").any() else None
    return card, verdict


def _plain(value: float) -> str:
    """Counts without decimals, ratios with three: parameters and "student ÷ teacher" in one table."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3f}"


def _number(value: float, fmt: str = ".3f") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


# --------------------------------------------------------------------------------------------


def scorecard(ctx: Context) -> None:
    st.header("Scorecard")
    scored = tables.scored_runs(ctx.runs)
    if scored.empty:
        st.info("No finished eval or gate run matches the filters. `kdh eval` scores teacher and student; "
                "`kdh loop` scores, distils and gates.")
        return
    gates = [i for i, kind in enumerate(scored["kind"]) if kind == "gate"]
    run_id = _pick_run(scored, "Run", "scorecard_run", default=gates[0] if gates else 0)
    card, verdict = _load(ctx, run_id)
    who = tables.roles(card)
    summary = tables.domain_summary(card, verdict)
    st.caption("  \n".join(f"{role}: **{who[role]}** · `{card.models.get(who[role], {}).get('source', '?')}`"
                            for role in ("teacher", "champion", "student") if who[role]))
    if verdict is None:
        st.caption("An eval run: no gate judged it (pick a gate run for verdicts and the champion).")

    # At a glance: a tile per domain (the student's retention, its change against the champion, the
    # verdict) beside the chart of teacher vs student; then the full table.
    tiles, chart = st.columns([1, 1])
    with tiles:
        for start in range(0, len(summary), 2):
            for column, row in zip(st.columns(2), summary.iloc[start:start + 2].itertuples()):
                change = None if math.isnan(row.change) else f"{row.change:+.3f} vs champion"
                column.metric(f"{row.domain} {MARK.get(row.verdict, '')}", _number(row.retention), change,
                              help=row.reason or "retention of the teacher's score", border=True)
    chart.altair_chart(charts.retention_bars(card.domains, who, summary, tables.floors(verdict)), width="stretch")

    st.subheader(f"Per domain and slice · {who['student']} vs {who['teacher']}")
    table = tables.scorecard_table(card, verdict)
    _show(table, "scorecard_table", _coloured(table, "verdict"), rows=40)
    st.caption("Rows “(domain)” hold retention of the teacher's score (teacher = 1.000); slice rows hold the "
               "slice's counting metric. retention and change are the student's; change is against the champion, "
               "in retention points (negative = a drop).")

    st.subheader("Drill down")
    domain = st.selectbox("Domain", list(summary["domain"]), key="drill_domain")
    detail = tables.slice_detail(card, domain)
    stderr = [c for c in detail.columns if c.endswith("stderr")]
    values = [c for c in detail.columns if c in card.model_names]
    formats = {**{c: "{:.4g}" for c in values}, **{c: "{:.4f}" for c in stderr}}
    _show(detail, "slice_detail", detail.style.format(formats))
    if verdict is not None:
        checks = verdict[verdict["domain"] == domain]
        _show(checks, "domain_checks", _coloured(checks, "status", "{:.4f}"))


def gate(ctx: Context) -> None:
    st.header("Gate")
    history = data.promotions(ctx.uri, ctx.suite)
    holder = tables.champion_since(history)
    gates = ctx.runs[(ctx.runs["kind"] == "gate") & (ctx.runs["status"] == "FINISHED")]
    a, b, c = st.columns(3)
    a.metric(f"champion of kdh-{ctx.suite}", f"v{holder[0]}" if holder else "none",
             help="the version the registry alias `champion` points at")
    since = pd.Timestamp(holder[1]).strftime("%Y-%m-%d %H:%M UTC") if holder and holder[1] else "—"
    b.metric("champion since", since)
    latest = gates["verdict"].iloc[0] if len(gates) else ""
    c.metric("latest gate", {"pass": "✔ pass", "fail": "✘ FAIL"}.get(latest, "—"),
             f"{(gates['verdict'] == 'fail').sum()} of {len(gates)} gate runs failed" if len(gates) else None,
             delta_color="off")
    if gates.empty:
        st.info("No gate run matches the filters. `kdh gate` judges a candidate; `kdh loop` gates every round.")
    else:
        st.subheader("Latest verdicts")
        recent = _times(gates.head(20)[["start", "name", "verdict", "failing_domains", "run_id"]])
        _show(recent, "gate_runs", _coloured(recent, "verdict"), rows=10)
        run_id = _pick_run(gates, "Verdict of", "gate_run")
        verdict = data.table(ctx.uri, run_id, "tables/verdict.json")
        failed = verdict[verdict["status"] == "fail"]
        if failed.empty:
            st.success(f"Every check holds ({(verdict['status'] == 'pass').sum()} passed, "
                       f"{(verdict['status'] == 'skip').sum()} skipped).")
        else:
            st.error(f"{len(failed)} check(s) failed in {', '.join(dict.fromkeys(failed['domain']))}.")
        _show(verdict, "verdict", _coloured(verdict, "status", "{:.4f}"), rows=40)
    st.subheader("Promotions")
    if history.empty:
        st.info(f"No version of kdh-{ctx.suite} is registered yet: `kdh loop` promotes a candidate that passes.")
    else:
        shown = history.assign(champion=history["champion"].map({True: "★ champion", False: ""}),
                               fingerprint=history["fingerprint"].str[:12])
        _show(shown.drop(columns=["created"]), "promotions")


def distillation(ctx: Context) -> None:
    st.header("Distillation")
    runs = ctx.runs[ctx.runs["kind"] == "distill"]
    if runs.empty:
        st.info("No distillation run matches the filters. `kdh distill` or `kdh loop` makes one.")
        return
    run_id = _pick_run(runs, "Run", "distill_run")
    run = runs[runs["run_id"] == run_id].iloc[0]
    keys = tuple(c[len("metrics."):] for c in runs.columns if c.startswith("metrics.") and not pd.isna(run[c]))
    wanted = tuple(k for k in keys if k.startswith("ddk/") or k in ("loss", "ce", "kd", "tokens_per_s"))
    history = data.metric_history(ctx.uri, run_id, wanted)
    a, b, c, d = st.columns(4)
    a.metric("status", run["status"].lower())
    b.metric("last step", f"{int(history['step'].max()):,}" if len(history) else "—")
    c.metric("tokens/s", _number(run.get("metrics.tokens_per_s", math.nan), ",.0f"))
    d.metric("DDK's share of the loop", _number(run.get("metrics.ddk_share", math.nan), ".1%"))
    left, right = st.columns(2)
    weights = tables.ddk_series(history, "weight")
    if weights.empty:
        st.caption("No DDK weights in this run (a fixed mixture logs none).")
    else:
        left.altair_chart(charts.domain_weights(weights, ctx.colours), width="stretch")
        right.altair_chart(charts.ratios(tables.ddk_series(history, "ratio"), ctx.colours), width="stretch")
    left, right = st.columns(2)
    left.altair_chart(charts.curves(tables.training_curves(history, ("loss", "ce", "kd")), "Loss: total, CE and KD",
                                    "loss"), width="stretch")
    right.altair_chart(charts.curves(tables.training_curves(history, ("tokens_per_s",)), "Throughput",
                                     "tokens/s"), width="stretch")


def history(ctx: Context) -> None:
    st.header("History")
    models = tables.scored_models(ctx.runs)
    if not models:
        st.info("No eval run matches the filters. Each `kdh eval` or `kdh loop` round adds a point here.")
        return
    model = st.selectbox("Model", models, key="history_model",
                         help="in `kdh loop`, 'student' is the champion of the day")
    trend = tables.retention_history(ctx.runs, model)
    gates = ctx.runs[(ctx.runs["kind"] == "gate") & (ctx.runs["status"] == "FINISHED")]
    floors = tables.floors(data.table(ctx.uri, gates["run_id"].iloc[0], "tables/verdict.json")) if len(gates) else {}
    events = tables.champion_events(data.promotions(ctx.uri, ctx.suite))
    st.altair_chart(charts.retention_trend(trend, ctx.colours, events, floors), width="stretch")
    st.subheader("Sliding?")
    sliding = tables.slide(trend, floors)
    _show(sliding, "slide", sliding.style.format(precision=3))
    st.caption("per run: the least-squares change per run over the last 5 runs; runs to floor: at that pace, "
               "how many more runs until the gate's floor is crossed.")

    st.subheader("Efficiency: student vs teacher")
    evals = tables.scored_runs(ctx.runs)
    evals = evals[evals["kind"] == "eval"]
    run_id = _pick_run(evals, "Eval run", "efficiency_run")
    frame = tables.efficiency(data.scorecard(ctx.uri, run_id))
    left, right = st.columns([3, 2])
    with left:
        _show(frame, "efficiency", frame.style.format({c: _plain for c in frame.columns if c != "measure"}))
    if "student ÷ teacher" in frame.columns:
        right.altair_chart(charts.efficiency_bars(frame), width="stretch")


def compare(ctx: Context) -> None:
    st.header("Compare two runs")
    scored = tables.scored_runs(ctx.runs)
    if len(scored) < 2:
        st.info("Comparing needs two finished eval or gate runs in the selection.")
        return
    left, right = st.columns(2)
    with left:
        run_a = _pick_run(scored, "Run A", "compare_a", default=1)
    with right:
        run_b = _pick_run(scored, "Run B", "compare_b", default=0)
    a, b = data.scorecard(ctx.uri, run_a), data.scorecard(ctx.uri, run_b)
    st.caption(f"A's student `{tables.roles(a)['student']}` vs B's student `{tables.roles(b)['student']}`, "
               "each as retention of its own run's teacher.")
    frame = tables.compare(a, b)
    left, right = st.columns([2, 3])
    with left:
        _show(frame, "compare_domains", frame.style.format(precision=3))
    right.altair_chart(charts.dumbbell(frame, run_a[:8], run_b[:8]), width="stretch")
    st.subheader("Slices")
    slices = tables.compare_slices(a, b)
    _show(slices, "compare_slices", slices.style.format(precision=4), rows=40)


VIEWS = {"Scorecard": scorecard, "Gate": gate, "Distillation": distillation, "History": history, "Compare": compare}


def empty_store(uri_text: str, why: str) -> None:
    st.title("kdh dashboard")
    st.info(f"Nothing to show yet: {why}.")
    st.markdown(
        "Create runs with kdh, then reload this page:\n\n"
        "```text\nkdh loop      # score teacher and student, distil the weak domains, gate, promote\n"
        "kdh eval      # or only score teacher and student\n```\n\n"
        f"This page reads `{uri_text}`. If your runs are in another store, start the dashboard with "
        "`kdh dashboard --tracking-uri URI` (or set `MLFLOW_TRACKING_URI`).")
