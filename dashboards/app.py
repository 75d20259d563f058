"""kdh dashboard: scorecards, gate verdicts, distillation curves and history, read from MLflow.

Started by ``kdh dashboard`` (``streamlit run dashboards/app.py -- --tracking-uri URI``). It reads
the same store as every kdh verb (``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the kdh
home's SQLite store) and writes nothing to it.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

# Streamlit runs this file as a script: make the repository importable (harness, dashboards).
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st

from dashboards import analytics, charts, data, sweep, tables, views
from harness import home, tracking

home.configure_environment()  # offline and without telemetry, like every kdh verb
st.set_page_config(page_title="kdh dashboard", page_icon="⚗️", layout="wide")

uri = data.default_uri(sys.argv[1:])
st.sidebar.title("kdh dashboard")
st.sidebar.caption(f"Store: `{tracking.redact(uri)}`")

problem = data.store_problem(uri)
if problem is not None:
    kind, message = problem
    if kind == "empty":
        views.empty_store(tracking.redact(uri), message)
    else:
        st.title("kdh dashboard")
        st.error(f"**The store cannot be read.** {message}")
    st.stop()

suites = data.experiments(uri)
if suites.empty:
    views.empty_store(tracking.redact(uri), "the store holds no kdh runs")
    st.stop()

suite = st.sidebar.selectbox("Suite", list(suites["suite"]), key="suite")
experiment_id = suites.loc[suites["suite"] == suite, "experiment_id"].iloc[0]
runs = data.runs(uri, experiment_id)
if runs.empty:
    views.empty_store(tracking.redact(uri), f"suite '{suite}' has no runs")
    st.stop()

# dashboards/analytics.py: agreement, efficiency, trends, advice; dashboards/sweep.py: the size sweep's frontier
VIEWS = {**views.VIEWS, "Analytics": analytics.view, "Sweep": sweep.view}
view = st.sidebar.radio("View", list(VIEWS), key="view")

# Filters narrow every view's run lists; a nested run stays with its parent.
model = st.sidebar.text_input("Model", key="model", placeholder="name or path contains …",
                              help="a model's name (teacher, student, candidate, …) or part of its path; "
                                   "eval runs record names, gate, distill and loop runs record paths")
first, last = runs["start"].min().date(), runs["start"].max().date()
dates = st.sidebar.date_input("Dates", (first, last), min_value=first, max_value=last, key="dates")
# While a range is being picked the widget holds one date (the start), or none.
start, end = (list(dates) + [None, None])[:2] if isinstance(dates, (tuple, list)) else (dates, dates)
filtered = tables.filter_runs(runs, model.strip(), start, end)
st.sidebar.caption(f"{len(filtered):,} of {len(runs):,} runs in kdh/{suite}")

if st.sidebar.button("Refresh", help=f"read the store again (reads are cached for {data.LIST_TTL} s)"):
    data.clear()
    st.rerun()
st.sidebar.caption(f"Runs read at {runs.attrs.get('read_at', f'{datetime.now():%H:%M:%S}')}; kept {data.LIST_TTL} s")

# Colours by domain name, sorted, so a domain keeps its colour across runs and sessions.
domains = sorted({c.split("/")[-2] for c in runs.columns
                  if c.startswith("metrics.") and (c.endswith("/retention") and c.count("/") == 2
                                                   or c.startswith("metrics.ddk/weight/"))})
context = views.Context(uri=uri, suite=suite, runs=filtered, colours=charts.domain_colours(domains))
try:
    VIEWS[view](context)
except data.DataMissing as err:
    st.warning(f"This run cannot be shown: {err}.")
