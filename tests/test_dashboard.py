"""The dashboard, headless (Streamlit's AppTest), against a real MLflow store that real kdh commands
filled: a loop on the tiny demo world (eval, DDK distillation, gate, promotion), then a gate with a
strict floor that fails, and an eval of a second suite. Every view renders, and the numbers it shows
are the ones kdh saved in its scorecards and verdicts. Also: the empty store, a server that does not
answer, a URI with a password, and the filters."""

from __future__ import annotations

import json
import shutil
import socket
import sys
from datetime import date
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow as pa
import pytest
import streamlit as st
from mlflow import MlflowClient
from streamlit.testing.v1 import AppTest

from dashboards import tables
from harness import dashboard, home
from harness.cli import main
from harness.scorecard import Scorecard, item_comparison

APP = Path(__file__).resolve().parent.parent / "dashboards" / "app.py"
VIEWS = ("Scorecard", "Gate", "Distillation", "History", "Compare", "Analytics", "Sweep")


@pytest.fixture(scope="module")
def store(tiny_world, lenient_suite, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dashboard")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    assert main(["loop", "--suite", str(lenient_suite), "--steps", "10", "--interval", "5", "--tracking-uri", uri,
                 "--out", str(folder / "loop")]) == 0
    # A gate the candidate fails: the same suite with a floor no tiny student reaches.
    suites = folder / "suites"
    shutil.copytree(lenient_suite.parent / "tasks", suites / "tasks")
    strict = suites / "strict.yaml"
    strict.write_text(lenient_suite.read_text().replace("min_retention: 0.1", "min_retention: 0.99"))
    candidate = folder / "loop" / "round-1" / "distill" / "student"
    assert main(["gate", "--suite", str(strict), "--candidate", str(candidate), "--teacher",
                 str(tiny_world.teacher_dir), "--tracking-uri", uri, "--out", str(folder / "strict-gate")]) == 1
    # A second suite, so that the suite selector has a choice.
    other = suites / "other.yaml"
    other.write_text(lenient_suite.read_text().replace("name: default", "name: other", 1))
    assert main(["eval", "--suite", str(other), "--tracking-uri", uri, "--out", str(folder / "other-eval"),
                 "--profile"]) == 0
    yield uri, folder
    mlflow.set_tracking_uri(home.tracking_uri())  # the app pointed MLflow's global URI at this store


@pytest.fixture(autouse=True)
def fresh_cache():
    st.cache_data.clear()  # the cache is process-wide: each test reads its store afresh


@pytest.fixture(scope="module", autouse=True)
def one_component_scan():
    """Each new AppTest scans every installed distribution for Streamlit components (about 0.4 s,
    two dozen apps here); the installed packages do not change during the tests and the dashboard
    uses no components, so the first scan serves them all."""
    from streamlit.components.v2 import manifest_scanner

    scan, found = manifest_scanner.scan_component_manifests, manifest_scanner.scan_component_manifests()
    manifest_scanner.scan_component_manifests = lambda max_workers=None: list(found)
    yield
    manifest_scanner.scan_component_manifests = scan


def app(monkeypatch, uri: str) -> AppTest:
    monkeypatch.setattr(sys, "argv", ["app.py", "--tracking-uri", uri])  # AppTest sees pytest's argv
    at = AppTest.from_file(str(APP), default_timeout=90).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def show(at: AppTest, view: str) -> AppTest:
    at.sidebar.radio(key="view").set_value(view).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


TABLES = {  # the columns that tell the page's tables apart
    "scorecard": {"metric", "better", "retention", "change", "verdict"},
    "drill-down": {"primary", "candidate ± stderr"},
    "checks": {"check", "status", "observed", "p_value"}, "gate runs": {"verdict", "failing_domains"},
    "promotions": {"promoted_at", "previous_champion"}, "slide": {"per run", "runs to floor"},
    "efficiency": {"measure", "student ÷ teacher"}, "compare": {"domain", "A", "B", "B − A"},
    "agreement": {"top1_agreement", "kl_bits", "reference_ece"}, "trends": {"per_version", "versions_to_floor"},
    "items": {"gold", "differs"}, "profile": {"ttft_ms", "ms_per_token", "batch"},
    "profile ratios": {"retention", "ms_per_token ÷ teacher"},
}


def frame(at: AppTest, name: str) -> pd.DataFrame:
    """The data (unformatted) behind the first table on the page with the columns of ``name``."""
    found = [d.value for d in at.dataframe if TABLES[name] <= set(d.value.columns)]
    assert found, f"no {name} table on the page"
    return found[0]


def chart(at: AppTest, title_start: str) -> list[pd.DataFrame]:
    """The datasets of the chart whose title starts so."""
    for element in at.get("vega_lite_chart"):
        if json.loads(element.proto.spec).get("title", "").startswith(title_start):
            return [pa.ipc.open_stream(d.data.data).read_pandas() for d in element.proto.datasets]
    raise AssertionError(f"no chart titled '{title_start}…'")


def saved(folder: Path, name: str) -> tuple[Scorecard, pd.DataFrame]:
    return Scorecard.load(folder / name), pd.read_csv(folder / name / "verdict.csv")


# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_view_renders_against_the_seeded_store(store, monkeypatch):
    at = app(monkeypatch, store[0])
    for view in VIEWS:
        show(at, view)
        assert at.header[0].value.startswith(view.split()[0])


@pytest.mark.slow
def test_the_scorecard_shows_the_newest_gate_with_its_numbers_and_verdicts(store, monkeypatch):
    uri, folder = store
    card, verdict = saved(folder, "strict-gate")
    at = app(monkeypatch, uri)
    retention = card.domains.set_index(["model", "domain"])["retention"]
    domain_status = verdict[verdict["slice"] == "(domain)"].groupby("domain")["status"].agg(
        lambda s: "fail" if (s == "fail").any() else "pass")
    tiles = {m.label.split()[0]: m for m in at.metric}
    assert set(tiles) == set(domain_status.index)
    for domain, status in domain_status.items():
        tile = tiles[domain]
        assert tile.value == f"{retention[('candidate', domain)]:.3f}"
        assert tile.delta == f"{retention[('candidate', domain)] - retention[('champion', domain)]:+.3f} vs champion"
        assert ("FAIL" in tile.label) == (status == "fail")
    assert "FAIL" in " ".join(tiles[d].label for d in tiles)  # the strict floor fails somewhere

    table = frame(at, "scorecard").set_index(["domain", "slice"])
    for row in card.rows[card.rows["primary"]].itertuples():
        assert table.loc[(row.domain, row.slice), row.model] == pytest.approx(row.value)
    failing = verdict.loc[verdict["status"] == "fail", ["domain", "slice"]].drop_duplicates()
    assert set(table.index[table["verdict"] == "fail"]) == set(map(tuple, failing.to_numpy()))

    bars = pd.concat(chart(at, "Teacher vs student"))
    assert set(bars["model"].dropna()) == {"teacher", "champion", "candidate"}

    at.selectbox(key="drill_domain").set_value("records").run()
    detail = frame(at, "drill-down").set_index(["slice", "metric"])
    rows = card.rows[(card.rows["domain"] == "records") & (card.rows["model"] == "candidate")]
    for row in rows.itertuples():
        assert detail.loc[(row.slice, row.metric), "candidate"] == pytest.approx(row.value)
        if not pd.isna(row.stderr):
            assert detail.loc[(row.slice, row.metric), "candidate ± stderr"] == pytest.approx(row.stderr)
    checks = frame(at, "checks")
    assert set(checks["domain"]) == {"records"} and len(checks) == (verdict["domain"] == "records").sum()


@pytest.mark.slow
def test_the_gate_view_shows_verdicts_and_who_holds_champion(store, monkeypatch):
    uri, folder = store
    _, verdict = saved(folder, "strict-gate")
    at = show(app(monkeypatch, uri), "Gate")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["champion of kdh-default"] == "v1" and metrics["latest gate"] == "✘ FAIL"
    runs = frame(at, "gate runs")
    assert list(runs["verdict"]) == ["fail", "pass"]  # newest first
    shown = frame(at, "checks")
    keys = ["domain", "slice", "check", "status"]
    pd.testing.assert_frame_equal(shown[keys], verdict[keys])
    for column in ("observed", "threshold", "p_value"):
        assert shown[column].to_numpy() == pytest.approx(verdict[column].to_numpy(), nan_ok=True)
    assert list(shown["reason"]) == list(verdict["reason"])
    failing = verdict.loc[verdict["status"] == "fail", "domain"].unique()
    assert all(d in at.error[0].value for d in failing)
    promotions = frame(at, "promotions")
    assert list(promotions["version"]) == [1] and promotions["champion"].iloc[0] == "★ champion"


@pytest.mark.slow
def test_the_distillation_view_draws_the_ddk_weights_mlflow_holds(store, monkeypatch):
    uri, _ = store
    at = show(app(monkeypatch, uri), "Distillation")
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name("kdh/default").experiment_id
    distill = mlflow.search_runs([experiment], filter_string="tags.`kdh.kind` = 'distill'")["run_id"].iloc[0]
    logged = MlflowClient(uri).load_table(experiment, "tables/ddk_history.json", run_ids=[distill])
    weights = chart(at, "Domain weights")[0].set_index(["step", "domain"])["value"]
    assert len(logged) >= 2  # updates at steps 0 and 10 at least
    for _, update in logged.iterrows():
        for domain in ("code", "prose", "arithmetic", "records"):
            assert weights[(update["step"], domain)] == pytest.approx(update[f"weight/{domain}"])
    assert {"loss", "ce", "kd"} <= set(chart(at, "Loss")[0]["series"])
    assert chart(at, "Throughput")[0]["step"].min() > 0  # the run's overall rate (step 0) is not a point
    assert {m.label: m.value for m in at.metric}["last step"] == "10"


@pytest.mark.slow
def test_history_trends_each_domain_and_sets_efficiency_side_by_side(store, monkeypatch):
    uri, folder = store
    before = Scorecard.load(folder / "loop" / "round-1" / "before")
    at = show(app(monkeypatch, uri), "History")
    trend = chart(at, "Retention of the teacher's score")[0]
    kept = before.domains.set_index(["model", "domain"])["retention"]
    for domain in kept["student"].index:
        assert trend.loc[trend["domain"] == domain, "retention"].iloc[0] == pytest.approx(kept[("student", domain)])
    sliding = frame(at, "slide")
    assert set(sliding["domain"]) == set(kept["student"].index)
    assert (sliding["floor"] == 0.99).all()  # the floor of the newest gate (the strict one)
    efficiency = frame(at, "efficiency").set_index("measure")
    eff = before.efficiency.set_index("model")
    assert efficiency.loc["parameters", "teacher"] == eff.loc["teacher", "parameters"]
    assert efficiency.loc["parameters", "student ÷ teacher"] == pytest.approx(
        eff.loc["student", "parameters"] / eff.loc["teacher", "parameters"])


@pytest.mark.slow
def test_compare_puts_two_runs_side_by_side_domain_by_domain(store, monkeypatch):
    uri, folder = store
    at = show(app(monkeypatch, uri), "Compare")
    assert len(at.selectbox(key="compare_a").options) == 3  # the loop's eval and gate, the strict gate
    pick(at, "compare_a", "teacher vs base student")
    pick(at, "compare_b", "FAIL").run()
    a = Scorecard.load(folder / "loop" / "round-1" / "before").domains.set_index(["model", "domain"])["retention"]
    b = Scorecard.load(folder / "strict-gate").domains.set_index(["model", "domain"])["retention"]
    shown = frame(at, "compare").set_index("domain")
    for domain in shown.index:
        assert shown.loc[domain, "A"] == pytest.approx(a[("student", domain)])
        assert shown.loc[domain, "B"] == pytest.approx(b[("candidate", domain)])
        assert shown.loc[domain, "B − A"] == pytest.approx(b[("candidate", domain)] - a[("student", domain)])


def pick(at: AppTest, key: str, text: str) -> AppTest:
    """Choose the run whose label contains ``text``."""
    box = at.selectbox(key=key)
    return box.select_index(next(i for i, label in enumerate(box.options) if text in label))


@pytest.mark.slow
def test_filters_narrow_every_list_by_suite_model_and_date(store, monkeypatch):
    at = app(monkeypatch, store[0])
    assert at.selectbox(key="suite").options == ["default", "other"]
    assert len(at.selectbox(key="scorecard_run").options) == 3
    at.sidebar.text_input(key="model").input("round-1").run()  # the candidate's folder: only the gates
    assert all("gate" in label for label in at.selectbox(key="scorecard_run").options)
    at.sidebar.text_input(key="model").input("no-such-model").run()
    assert "No finished eval or gate run matches" in at.info[0].value
    at.sidebar.text_input(key="model").input("").run()
    at.selectbox(key="suite").set_value("other").run()
    options = at.selectbox(key="scorecard_run").options
    assert len(options) == 1 and "eval" in options[0]
    assert not at.exception


def test_the_date_filter_keeps_a_run_with_its_nested_runs():
    runs = pd.DataFrame({"run_id": ["p", "c", "old"], "parent": ["", "p", ""], "models": ["a", "a", "a"],
                         "start": pd.to_datetime(["2026-03-02 10:00", "2026-03-01 23:59", "2026-01-01 08:00"], utc=True)})
    assert list(tables.filter_runs(runs, start=date(2026, 3, 2), end=date(2026, 3, 2))["run_id"]) == ["p", "c"]
    assert list(tables.filter_runs(runs, end=date(2026, 2, 1))["run_id"]) == ["old"]


def test_the_champion_holds_since_its_promotion_or_the_rollback_that_restored_it():
    history = pd.DataFrame({"version": [3, 2, 1], "champion": [False, True, False],
                            "promoted_at": ["2026-03-03T00:00:00+00:00", "2026-03-02T00:00:00+00:00", "2026-03-01T00:00:00+00:00"],
                            "rolled_back_at": ["2026-03-04T00:00:00+00:00", "", ""],
                            "previous_champion": ["2", "1", ""]})
    assert tables.champion_since(history) == (2, "2026-03-04T00:00:00+00:00")  # v3 rolled back to v2
    assert list(tables.champion_events(history)["event"]) == ["v1 promoted", "v2 promoted", "v3 promoted", "back to v2"]
    assert tables.champion_since(history.assign(champion=False)) is None


def test_a_slow_slide_shows_how_many_runs_are_left_before_the_floor():
    trend = pd.DataFrame({"domain": ["code"] * 6 + ["prose"] * 6,
                          "retention": [0.95, 0.94, 0.93, 0.92, 0.91, 0.90] + [0.8, 0.82, 0.8, 0.82, 0.8, 0.82]})
    slide = tables.slide(trend, {"code": 0.8, "prose": 0.6}).set_index("domain")
    assert slide.loc["code", "per run"] == pytest.approx(-0.01)
    assert slide.loc["code", "runs to floor"] == pytest.approx(10)  # 0.90 → 0.80 at −0.01 a run
    assert pd.isna(slide.loc["prose", "runs to floor"])  # not sliding


def test_an_empty_store_says_what_to_run_and_creates_nothing(tmp_path, monkeypatch):
    missing = tmp_path / "nothing-here" / "mlflow.db"
    at = app(monkeypatch, f"sqlite:///{missing}")
    assert "Nothing to show yet" in at.info[0].value
    assert "kdh loop" in " ".join(m.value for m in at.markdown)
    assert not missing.exists() and not missing.parent.exists()  # the dashboard writes nothing

    empty = tmp_path / "empty.db"
    MlflowClient(f"sqlite:///{empty}").search_experiments()  # a store with MLflow's tables and no kdh run
    st.cache_data.clear()
    at = app(monkeypatch, f"sqlite:///{empty}")
    assert "the store holds no kdh runs" in at.info[0].value


def test_a_run_without_a_scorecard_gets_a_warning_not_a_trace(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("kdh/odd", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment, tags={"kdh.kind": "eval", "kdh.suite": "odd"}, run_name="no artifacts")
    client.set_terminated(run.info.run_id)  # finished, but it never logged a scorecard
    at = app(monkeypatch, uri)
    assert "This run cannot be shown" in at.warning[0].value and "scorecard.json" in at.warning[0].value


def test_a_server_that_does_not_answer_gets_a_message_not_a_trace(monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free, and nothing listens once closed
    at = app(monkeypatch, f"http://kdh:s3cret@127.0.0.1:{port}")
    assert "does not answer" in at.error[0].value and "127.0.0.1" in at.error[0].value
    page = " ".join([at.error[0].value, *(c.value for c in at.sidebar.caption)])
    assert "s3cret" not in page and "kdh:***@" in page  # the password is redacted everywhere

    at = app(monkeypatch, "bogus://nowhere")
    assert "could not read the MLflow store at bogus://nowhere" in at.error[0].value


def test_kdh_dashboard_stops_on_a_dead_server_and_keeps_passwords_off_the_command_line(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["dashboard", "--tracking-uri", f"http://127.0.0.1:{port}"]) == 2
    assert "does not answer" in capsys.readouterr().err
    cmd = dashboard.command("http://kdh:s3cret@mlflow.internal:5000", "127.0.0.1", 8600)
    assert "s3cret" not in " ".join(cmd) and cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert dashboard.command("sqlite:////x/mlflow.db", "127.0.0.1", 8600)[-3:] == ["--", "--tracking-uri",
                                                                                   "sqlite:////x/mlflow.db"]


@pytest.mark.slow
def test_analytics_shows_agreement_and_the_champion_trend(store, monkeypatch):
    uri, folder = store
    at = show(app(monkeypatch, uri), "Analytics")
    # The newest scored run of the suite is the strict gate: its candidate's agreement, per domain.
    card, _ = saved(folder, "strict-gate")
    shown = frame(at, "agreement").set_index(["model", "domain"])
    expected = card.agreement_domains.set_index(["model", "domain"])
    assert set(shown.index) == set(expected.index) == {(m, d) for m in ("candidate", "champion") for d in
                                                         ("code", "prose", "arithmetic", "records")}
    for column in ("top1_agreement", "kl_bits", "js_bits", "ece", "reference_ece"):
        assert shown[column].to_numpy() == pytest.approx(expected.loc[shown.index, column].to_numpy())
    assert set(pd.concat(chart(at, "Top-1 agreement"))["domain"].dropna()) == {"code", "prose", "arithmetic", "records"}
    # The loop promoted one version, gated by a passing run: one point per domain, too few to forecast.
    gated = Scorecard.load(next((folder / "loop").glob("round-1/gate*"))).domains.set_index(["model", "domain"])
    trend = frame(at, "trends").set_index("domain")
    for domain, row in trend.iterrows():
        assert row["points"] == 1 and row["latest"] == pytest.approx(gated.loc[("candidate", domain), "retention"])
        assert not row["alert"] and "a forecast needs 3" in row["reason"]
    assert chart(at, "Retention per champion version")
    # Side by side: the teacher's and the candidate's answers on the chosen slice, then only where they differ.
    at.selectbox(key="items_domain").set_value("arithmetic").run()
    at.selectbox(key="items_slice").set_value("answer").run()
    expected = item_comparison(card.items, "teacher", "candidate", "arithmetic", "answer")
    shown = frame(at, "items")
    assert list(shown["doc_id"]) == list(expected["doc_id"]) and list(shown["differs"]) == list(expected["differs"])
    at.checkbox(key="items_disagreements").check().run()
    only = frame(at, "items")
    assert only["differs"].all() and len(only) == int(expected["differs"].sum())


@pytest.mark.slow
def test_analytics_shows_the_generation_profile_of_an_eval_run_with_one(store, monkeypatch):
    uri, folder = store
    at = app(monkeypatch, uri)
    at.sidebar.selectbox(key="suite").set_value("other").run()
    at = show(at, "Analytics")
    profile = pd.read_csv(folder / "other-eval" / "profile.csv")
    shown = frame(at, "profile").set_index(["model", "batch"])
    assert set(shown.index) == set(zip(profile["model"], profile["batch"])) == {(m, b) for m in ("teacher", "student")
                                                                                for b in (1, 8)}
    for row in profile.itertuples():
        assert shown.loc[(row.model, row.batch), "ms_per_token"] == pytest.approx(row.ms_per_token)
    ratios = frame(at, "profile ratios").set_index("batch")
    assert ratios["ms_per_token ÷ teacher"].to_numpy() == pytest.approx(
        [profile.query("model == 'student' and batch == @b")["ms_per_token"].iloc[0]
         / profile.query("model == 'teacher' and batch == @b")["ms_per_token"].iloc[0] for b in ratios.index])
    assert chart(at, "student: cost against teacher")
    assert any("Measured on" in c.value and "torch" in c.value for c in at.caption)
