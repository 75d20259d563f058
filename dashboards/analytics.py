"""The Analytics view: agreement with the teacher and calibration per domain, each domain's trend
over the champion versions with its forecast and alerts, and the recommendations, all from what kdh
logged (scorecards, the registry, the gate runs' domain tables). docs/analytics.md explains each."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboards import data, tables, views
from harness import analytics_report, recommend, trends
from harness.scorecard import ITEM_COLUMNS, item_comparison, read_items


@st.cache_data(ttl=data.LIST_TTL, show_spinner=False)
def champion_history(uri: str, suite: str) -> pd.DataFrame:
    """harness.trends.champion_history of the suite: retention per domain of each champion version."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(uri)  # harness.trends reads the registry of the current URI
    try:
        return trends.champion_history(suite)
    except MlflowException:  # a store without a registry
        return pd.DataFrame(columns=trends.HISTORY_COLUMNS)


@st.cache_data(ttl=data.RUN_TTL, show_spinner=False)
def items(uri: str, run_id: str) -> pd.DataFrame:
    """The run's items.csv (each model's answer per item); empty for runs logged before kdh kept them."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kdh-dashboard-") as folder:
        try:
            return read_items(data._download(uri, run_id, "items.csv", folder))
        except (data.DataMissing, ValueError):
            return pd.DataFrame(columns=ITEM_COLUMNS)


def agreement_chart(agreement: pd.DataFrame, colours: alt.Scale) -> alt.Chart:
    """Top-1 agreement per domain and model, with the KL beside each bar."""
    base = alt.Chart(agreement)
    bars = base.mark_bar().encode(
        y=alt.Y("domain:N", title=None), x=alt.X("top1_agreement:Q", title="top-1 agreement", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("domain:N", scale=colours, legend=None), yOffset="model:N",
        tooltip=["model", "domain", alt.Tooltip("top1_agreement:Q", format=".3f"), alt.Tooltip("kl_bits:Q", format=".3f"),
                 alt.Tooltip("js_bits:Q", format=".3f"), alt.Tooltip("ece:Q", format=".3f")])
    text = base.mark_text(align="left", dx=4).encode(
        y="domain:N", x="top1_agreement:Q", yOffset="model:N",
        text=alt.Text("label:N"))
    return (bars + text).transform_calculate(label="datum.model + ' · KL ' + format(datum.kl_bits, '.2f')").properties(
        title="Top-1 agreement with the teacher (1 = always the same prediction)")


def trend_chart(history: pd.DataFrame, table: pd.DataFrame, colours: alt.Scale) -> alt.LayerChart:
    """Retention per version and domain, the forecast line ahead of it, dashed, and each floor."""
    forecast = []
    for row in table.itertuples():
        mine = history[history["domain"] == row.domain]
        if pd.isna(row.per_version) or mine.empty:
            continue
        last = int(mine["version"].max())
        fitted = row.forecast - row.per_version * trends.HORIZON
        forecast += [{"domain": row.domain, "version": last, "retention": fitted},
                     {"domain": row.domain, "version": last + trends.HORIZON, "retention": row.forecast}]
    title = "Retention per champion version, forecast ahead (dashed), floors (rules)"
    lines = alt.Chart(history).mark_line(point=True).encode(
        x=alt.X("version:Q", title="champion version", axis=alt.Axis(tickMinStep=1)),
        y=alt.Y("retention:Q", scale=alt.Scale(zero=False)), color=alt.Color("domain:N", scale=colours))
    ahead = alt.Chart(pd.DataFrame(forecast, columns=["domain", "version", "retention"])).mark_line(strokeDash=[5, 4]).encode(
        x="version:Q", y="retention:Q", color=alt.Color("domain:N", scale=colours))
    floors = alt.Chart(table.dropna(subset=["floor"])).mark_rule(opacity=0.5).encode(
        y="floor:Q", color=alt.Color("domain:N", scale=colours))
    return (lines + ahead + floors).properties(title=title)


def view(ctx: views.Context) -> None:
    st.header("Analytics")
    scored = tables.scored_runs(ctx.runs)
    if scored.empty:
        st.info("No finished eval or gate run matches the filters. `kdh eval` measures agreement and calibration.")
        return
    run_id = views._pick_run(scored, "Run", "analytics_run")
    card = data.scorecard(ctx.uri, run_id)
    student = tables.roles(card)["student"]

    st.subheader("Agreement with the teacher and calibration")
    agreement = card.agreement_domains
    if agreement.empty:
        st.info("This run's scorecard has no agreement figures (it was scored before kdh measured them).")
    else:
        left, right = st.columns([3, 2])
        with left:
            views._show(agreement, "agreement", agreement.style.format(precision=3))
        right.altair_chart(agreement_chart(agreement, ctx.colours), width="stretch")
        st.caption("top1_agreement: share of positions where both models predict the same next token (same "
                   "vocabulary) or next byte (across vocabularies); kl_bits, js_bits: per position, in bits; ece: "
                   "expected calibration error of the model, reference_ece: of the teacher.")

    efficiency_profile(ctx, run_id, card)

    st.subheader("Trends over champion versions")
    history = champion_history(ctx.uri, ctx.suite)
    gates = ctx.runs[(ctx.runs["kind"] == "gate") & (ctx.runs["status"] == "FINISHED")]
    floors = tables.floors(data.table(ctx.uri, gates["run_id"].iloc[0], "tables/verdict.json")) if len(gates) else {}
    table = trends.trend_table(history, floors)
    if history.empty:
        st.info("No champion version with a passing gate yet: `kdh loop` or `kdh promote` registers them.")
    else:
        for line in trends.alerts(table):
            st.warning(f"**Trend alert** · {line}")
        st.altair_chart(trend_chart(history, table, ctx.colours), width="stretch")
        views._show(table, "trends", table.style.format(precision=3))
        st.caption(f"A least-squares line through each domain's last {trends.WINDOW} versions; an alert when it "
                   f"reaches below the floor within {trends.HORIZON} versions while the domain still holds it.")

    side_by_side(ctx, run_id, card)

    st.subheader("Recommendations")
    advice = recommend.recommendations(card, _suite_of(card, floors), student, table if len(history) else None)
    st.markdown("\n".join(f"- {line}" for line in advice) if advice else "No rule fires on these numbers.")


def efficiency_profile(ctx: views.Context, run_id: str, card) -> None:
    """`kdh eval --profile`'s figures: generation latency, time to first token, tokens/s and memory per
    model and batch size, and each model's over the teacher's beside its retention."""
    st.subheader("Efficiency profile")
    try:
        profile = data.table(ctx.uri, run_id, "tables/profile.json")
    except data.DataMissing:
        st.info("This run has no generation profile: `kdh eval --profile` measures one.")
        return
    st.caption(f"Measured on {profile['hardware'].iloc[0]}; greedy generation of {int(profile['new_tokens'].iloc[0])} "
               f"tokens after {int(profile['prompt_tokens'].iloc[0])}-token prompts of the suite's own text.")
    shown = profile.drop(columns=["hardware"])
    views._show(shown, "profile", shown.style.format(precision=2, thousands=","))
    relative = analytics_report.profile_ratios(profile, card.reference, card.domains)
    if not relative.empty:
        for model in dict.fromkeys(relative["model"]):
            st.altair_chart(profile_chart(relative, model, card.reference), width="stretch")
        views._show(relative, "profile_ratios", relative.style.format(precision=3))


def profile_chart(relative: pd.DataFrame, model: str, reference: str) -> alt.LayerChart:
    """One model's latency, time to first token, memory and size over the teacher's, per batch size
    (below 1: cheaper), its retention in the title."""
    mine = relative[relative["model"] == model]
    measures = [c for c in mine.columns if c.endswith(f" ÷ {reference}") and not c.startswith("tokens_per_s")]
    long = mine.melt(id_vars=["batch"], value_vars=measures, var_name="measure", value_name="ratio")
    long["measure"] = long["measure"].str.replace(f" ÷ {reference}", "", regex=False)
    base = alt.Chart(long).encode(y=alt.Y("measure:N", title=None), yOffset="batch:N",
                                  x=alt.X("ratio:Q", title=f"÷ {reference} (1 = the same; below: cheaper)"))
    bars = base.mark_bar().encode(color=alt.Color("batch:N", title="batch"),
                                  tooltip=["batch", "measure", alt.Tooltip("ratio:Q", format=".3f")])
    text = base.mark_text(align="left", dx=3).encode(text=alt.Text("ratio:Q", format=".2f"))
    parity = alt.Chart(pd.DataFrame({"x": [1.0]})).mark_rule(strokeDash=[4, 3], color="#616161").encode(x="x:Q")
    retention = mine["retention"].iloc[0]
    return (bars + text + parity).properties(
        title=f"{model}: cost against {reference} (mean retention {retention:.3f})", height=60 * len(measures))


def side_by_side(ctx: views.Context, run_id: str, card) -> None:
    """One slice's items: the teacher's and the student's answers and per-item scores, side by side."""
    st.subheader("Side by side")
    found = items(ctx.uri, run_id)
    who = tables.roles(card)
    if found.empty or who["student"] is None:
        st.info("This run has no per-item answers (runs logged before kdh kept them, or a single model).")
        return
    left, middle, right = st.columns([2, 2, 1])
    domain = left.selectbox("Domain", list(dict.fromkeys(found["domain"])), key="items_domain")
    slice_name = middle.selectbox("Slice", list(dict.fromkeys(found.loc[found["domain"] == domain, "slice"])),
                                  key="items_slice")
    only = right.checkbox("Only disagreements", key="items_disagreements")
    frame = item_comparison(found, who["teacher"], who["student"], domain, slice_name)
    st.caption(f"{int(frame['differs'].sum())} of {len(frame)} items differ between {who['teacher']} and "
               f"{who['student']} (their answers, or for a slice without answers their scores); largest gap first.")
    views._show(frame[frame["differs"]] if only else frame, "items", rows=15)


def _suite_of(card, floors: dict[str, float]):
    """The few suite facts the rules read (its domains and their floors), from the records alone: the
    dashboard does not open suite files."""
    from harness.registry import Domain, Suite, Thresholds

    names = list(dict.fromkeys(card.rows["domain"]))
    return Suite(card.suite, path=None, domains=tuple(Domain(n, (), thresholds=Thresholds(min_retention=floors.get(n)))
                                                     for n in names))
