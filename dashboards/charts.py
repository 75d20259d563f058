"""Altair charts, built from the frames in dashboards/tables.py (pure: frames in, charts out).

Readable without a legend hunt: every line and band carries its name at its right end, bars
carry their model and value, and a domain has the same colour in every chart of a session.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

PALETTE = ["#4e79a7", "#f28e2b", "#76b7b2", "#b07aa1", "#edc948", "#9c755f", "#ff9da7", "#59a14f", "#e15759", "#bab0ac"]
PASS, FAIL, NEUTRAL = "#2e7d32", "#c62828", "#4e79a7"
TEACHER, CHAMPION = "#9e9e9e", "#90a4ae"


def domain_colours(domains: list[str]) -> alt.Scale:
    """One colour per domain, by the suite's order, so "records" is the same colour everywhere."""
    return alt.Scale(domain=list(domains), range=[PALETTE[i % len(PALETTE)] for i in range(len(domains))])


def _end_labels(frame: pd.DataFrame, x: str, y: str, by: str, colour) -> alt.Chart:
    """The series' names at their last point: the legend, where the eye already is. Labels that
    would overlap are pushed apart vertically (by a share of the y range)."""
    xf, yf = x.split(":")[0], y.split(":")[0]
    last = frame.sort_values(xf).groupby(by, as_index=False, sort=False).tail(1).sort_values(yf)
    span = frame[yf].max() - frame[yf].min()
    gap, placed = (span or 1.0) * 0.1, []
    for value in last[yf]:
        placed.append(max(value, placed[-1] + gap) if placed else value)
    last = last.assign(**{yf: placed})
    return alt.Chart(last).mark_text(align="left", dx=6, fontWeight="bold").encode(
        x=x, y=y, text=alt.Text(f"{by}:N"), color=colour)


def _lines(frame: pd.DataFrame, x, y: str, by: str, colour, title: str, y_title: str) -> alt.LayerChart:
    x = x if isinstance(x, alt.X) else alt.X(x, title=x.split(":")[0])
    shorthand = x.shorthand
    line = alt.Chart(frame).mark_line(point=alt.OverlayMarkDef(size=25)).encode(
        x=x, y=alt.Y(y, title=y_title, scale=alt.Scale(zero=False)),
        color=colour, tooltip=[by, shorthand, alt.Tooltip(y, format=".4g")])
    return (line + _end_labels(frame, shorthand, y, by, colour)).properties(title=title, height=300)


# --------------------------------------------------------------------------------------------
# Scorecard


def retention_bars(domains: pd.DataFrame, who: dict, summary: pd.DataFrame, floors: dict) -> alt.LayerChart:
    """Per domain, one bar per model: its retention of the teacher's score (the teacher's bar is
    1.00, the parity line). The student's bar is green or red by the gate's verdict; a black tick
    marks the gate's floor."""
    order = [m for m in (who["teacher"], who["champion"], who["student"]) if m]
    frame = domains[domains["model"].isin(order)].copy()
    verdict = summary.set_index("domain")["verdict"]

    def fill(row) -> str:
        if row.model == who["teacher"]:
            return TEACHER
        if row.model == who["champion"]:
            return CHAMPION
        return {"pass": PASS, "fail": FAIL}.get(verdict.get(row.domain, ""), NEUTRAL)

    frame["fill"] = [fill(r) for r in frame.itertuples()]
    frame["label"] = [f"{r.model} {r.retention:.3f}" for r in frame.itertuples()]
    domain_order = list(dict.fromkeys(summary["domain"]))
    y = alt.Y("domain:N", sort=domain_order, title=None)
    base = alt.Chart(frame).encode(y=y, yOffset=alt.YOffset("model:N", sort=order))
    top = max(1.0, float(frame["retention"].max())) * 1.3  # room for the labels right of the bars
    x = alt.X("retention:Q", title="retention of the teacher's score (1.00 = parity)", scale=alt.Scale(domain=[0, top]))
    bars = base.mark_bar().encode(x=x,
                                  color=alt.Color("fill:N", scale=None),
                                  tooltip=["domain", "model", alt.Tooltip("retention:Q", format=".3f")])
    text = base.mark_text(align="left", dx=4, fontSize=11).encode(x="retention:Q", text="label:N")
    parity = alt.Chart(pd.DataFrame({"x": [1.0]})).mark_rule(strokeDash=[4, 3], color="#616161").encode(x="x:Q")
    layers = [bars, text, parity]
    if floors:
        ticks = pd.DataFrame({"domain": list(floors), "floor": list(floors.values())})
        layers.append(alt.Chart(ticks).mark_tick(color="black", thickness=2, size=40).encode(
            y=y, x="floor:Q", tooltip=[alt.Tooltip("floor:Q", title="gate floor")]))
    height = 24 * len(order) * len(domain_order) + 80  # the chart's whole height: axis and title included
    return alt.layer(*layers).properties(title="Teacher vs student per domain", height=height)


# --------------------------------------------------------------------------------------------
# Distillation


def domain_weights(weights: pd.DataFrame, scale: alt.Scale) -> alt.LayerChart:
    """DDK's sampling weights over steps, stacked to 1, each band named at its right end."""
    rank = {d: i for i, d in enumerate(scale.domain)}
    frame = weights.assign(rank=weights["domain"].map(rank).fillna(len(rank)))
    last = frame[frame["step"] == frame["step"].max()].sort_values("rank")
    last = last.assign(value=last["value"].cumsum() - last["value"] / 2)  # the middle of each band
    colour = alt.Color("domain:N", scale=scale, legend=None)
    area = alt.Chart(frame).mark_area(opacity=0.85).encode(
        x=alt.X("step:Q"), y=alt.Y("value:Q", stack="zero", title="sampling weight", scale=alt.Scale(domain=[0, 1])),
        color=colour, order=alt.Order("rank:Q"), tooltip=["domain", "step", alt.Tooltip("value:Q", format=".3f")])
    labels = alt.Chart(last).mark_text(align="left", dx=6, fontWeight="bold").encode(
        x="step:Q", y=alt.Y("value:Q", stack=None), text="domain:N", color=colour)
    return (area + labels).properties(title="Domain weights over steps (DDK)", height=300)


def ratios(frame: pd.DataFrame, scale: alt.Scale) -> alt.LayerChart:
    colour = alt.Color("domain:N", scale=scale, legend=None)
    parity = alt.Chart(pd.DataFrame({"y": [1.0]})).mark_rule(strokeDash=[4, 3], color="#616161").encode(y="y:Q")
    return _lines(frame, "step:Q", "value:Q", "domain", colour,
                  "Student ÷ teacher per domain, 1 = parity (perplexity; bits per byte across tokenizers)",
                  "ratio") + parity


def curves(frame: pd.DataFrame, title: str, y_title: str) -> alt.LayerChart:
    colour = alt.Color("series:N", legend=None, scale=alt.Scale(scheme="dark2"))
    return _lines(frame, "step:Q", "value:Q", "series", colour, title, y_title)


# --------------------------------------------------------------------------------------------
# History and comparison


def retention_trend(history: pd.DataFrame, scale: alt.Scale, events: pd.DataFrame, floors: dict) -> alt.LayerChart:
    """Each domain's retention run after run; dashed verticals where the champion changed, a
    dotted line at the gate's floor: a slide towards it shows before a gate fails."""
    colour = alt.Color("domain:N", scale=scale, legend=None)
    when = alt.X("start:T", title="run started", axis=alt.Axis(format="%b %d %H:%M", labelAngle=0))
    chart = _lines(history, when, "retention:Q", "domain", colour,
                   "Retention of the teacher's score, run after run", "retention")
    if not events.empty:
        rules = alt.Chart(events).encode(x="time:T")
        chart += rules.mark_rule(strokeDash=[5, 3], color="#616161") + rules.mark_text(
            align="left", baseline="top", dx=3, y=2, color="#424242").encode(text="event:N")
    for value in sorted(set(floors.values())):
        floor = alt.Chart(pd.DataFrame({"y": [value], "text": [f"gate floor {value:.2f}"]})).encode(y="y:Q")
        chart += floor.mark_rule(strokeDash=[2, 2], color=FAIL) + floor.mark_text(
            align="left", x=4, dy=-7, color=FAIL).encode(text="text:N")
    return chart


def efficiency_bars(frame: pd.DataFrame) -> alt.LayerChart:
    """The student as a share of the teacher for each measure (1 = the same)."""
    data = frame.dropna(subset=["student ÷ teacher"])
    base = alt.Chart(data).encode(y=alt.Y("measure:N", title=None, sort=list(data["measure"])),
                                  x=alt.X("student ÷ teacher:Q", title="student ÷ teacher"))
    bars = base.mark_bar(color=NEUTRAL)
    text = base.mark_text(align="left", dx=4).encode(text=alt.Text("student ÷ teacher:Q", format=".2f"))
    parity = alt.Chart(pd.DataFrame({"x": [1.0]})).mark_rule(strokeDash=[4, 3], color="#616161").encode(x="x:Q")
    return (bars + text + parity).properties(title="Student ÷ teacher (1 = the same)", height=45 * len(data) + 90)


def dumbbell(frame: pd.DataFrame, label_a: str, label_b: str) -> alt.LayerChart:
    """Run A (hollow) to run B (filled) per domain; green where B keeps more, red where less."""
    data = frame.dropna(subset=["A", "B"]).assign(
        colour=lambda f: [PASS if d >= 0 else FAIL for d in f["B − A"]])
    base = alt.Chart(data).encode(y=alt.Y("domain:N", sort=list(data["domain"]), title=None))
    line = base.mark_rule(strokeWidth=3).encode(x=alt.X("A:Q", title="student's retention of the teacher's score",
                                                        scale=alt.Scale(zero=False)), x2="B:Q",
                                                color=alt.Color("colour:N", scale=None))
    a = base.mark_point(size=120, filled=False, color="#424242").encode(x="A:Q", tooltip=["domain", "A", "B"])
    b = base.mark_point(size=120, filled=True).encode(x="B:Q", color=alt.Color("colour:N", scale=None))
    text = base.mark_text(align="left", dx=10).encode(x="B:Q", text=alt.Text("B − A:Q", format="+.3f"))
    return (line + a + b + text).properties(title=f"A: {label_a}   →   B: {label_b}", height=40 * len(data) + 80)
