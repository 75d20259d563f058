"""pytest plugin: a kdh suite as a test registry.

    pytest --kdh-suite suites/default.yaml --kdh-candidate ./student [--kdh-champion models:/kdh-default@champion]

collects one test per domain, slice and check of the gate (``code/ppl/retention``,
``records/(domain)/regression``, …) plus ``scorecard/valid``, so pytest's own reporting,
selection (``-k code``), ``--junitxml`` and CI integrations apply. The first test to run scores
the models once, through exactly what ``kdh gate`` runs (``harness.steps.gate``: the result cache,
the same decisions, a gate run in MLflow); every test then reports its own row of that verdict,
so a test passes or fails for the same reason as the gate's check.

Without ``--kdh-suite`` the plugin does nothing. With it, only the suite's tests run: the
project's own tests are deselected.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_SUITE = pytest.StashKey[object]()  # the loaded suite
_VERDICT = pytest.StashKey[object]()  # the gate's verdict, or the error that stopped it


def pytest_addoption(parser):
    group = parser.getgroup("kdh", "kdh regression suites")
    group.addoption("--kdh-suite", metavar="FILE", help="run this kdh suite's gate checks as tests")
    group.addoption("--kdh-candidate", metavar="PATH", help="the student to judge (a folder or models:/NAME@ALIAS)")
    group.addoption("--kdh-teacher", metavar="PATH", help="default: the demo teacher")
    group.addoption("--kdh-champion", metavar="PATH",
                    help="default: models:/kdh-SUITE@champion when registered; 'none' skips the regression checks")
    group.addoption("--kdh-limit", type=int, metavar="N", help="documents or items per slice")
    group.addoption("--kdh-tracking-uri", metavar="URI", help="MLflow tracking URI")


class KdhSuiteFile(pytest.File):
    """The suite file as a pytest collector: one item per gate check."""

    def collect(self):
        from harness.gate import planned_checks

        for domain, slice_name, check in planned_checks(self.config.stash[_SUITE]):
            yield KdhCheck.from_parent(self, name=f"{domain}/{slice_name}/{check}", key=(domain, slice_name, check))
        yield KdhCheck.from_parent(self, name="scorecard/valid", key=None)


class KdhCheck(pytest.Item):
    def __init__(self, *, key, **kwargs):
        super().__init__(**kwargs)
        self.key = key

    def runtest(self):
        verdict = _verdict(self.config)
        rows = verdict.rows
        if self.key is None:  # what the planned checks do not cover: validation, foreign domains
            from harness.gate import planned_checks

            planned = set(planned_checks(self.config.stash[_SUITE]))
            extra = rows[[(r.domain, r.slice, r.check) not in planned for r in rows.itertuples()]]
            if len(extra):
                pytest.fail("; ".join(extra["reason"]), pytrace=False)
            return
        domain, slice_name, check = self.key
        row = rows[(rows["domain"] == domain) & (rows["slice"] == slice_name) & (rows["check"] == check)]
        if row.empty:
            pytest.fail(f"the gate made no {check} check for {domain}/{slice_name}", pytrace=False)
        status, reason = row["status"].iloc[0], row["reason"].iloc[0]
        if status == "skip":
            pytest.skip(reason)
        if status != "pass":
            pytest.fail(reason, pytrace=False)

    def reportinfo(self):
        return self.path, None, f"kdh {self.name}"


def _verdict(config):
    """The gate's verdict, computed once per session; a failure to compute it fails every test."""
    if _VERDICT not in config.stash:
        try:
            config.stash[_VERDICT] = _run_gate(config)
        except Exception as err:  # noqa: BLE001 - every check reports it rather than crashing the session
            config.stash[_VERDICT] = err
    found = config.stash[_VERDICT]
    if isinstance(found, Exception):
        pytest.fail(f"kdh gate could not run: {found}", pytrace=False)
    return found


def _run_gate(config):
    from harness import promotion, steps, tracking
    from harness.inputs import model_or_demo, model_ref, output_folder
    from harness.scoring import ScoringOptions

    tracking.connect(config.getoption("kdh_tracking_uri"))
    suite = config.stash[_SUITE]
    option = config.getoption
    teacher = model_ref("teacher", model_or_demo(option("kdh_teacher"), "teacher", progress=False))
    candidate = model_ref("candidate", model_or_demo(option("kdh_candidate"), "student", progress=False))
    registered, champion = promotion.registered_name(suite.name), None
    if option("kdh_champion") and option("kdh_champion") != "none":
        champion = model_ref("champion", option("kdh_champion"))
    elif option("kdh_champion") is None and promotion.champion_version(registered) is not None:
        champion = model_ref("champion", f"models:/{registered}@champion")
    out = output_folder(None, "gates", suite.name, "pytest")
    return steps.gate(suite, teacher, candidate, champion, ScoringOptions(limit=option("kdh_limit")), out).verdict


def pytest_configure(config):
    path = config.getoption("kdh_suite", None)
    if not path:
        return
    from harness import home
    from harness.errors import KdhError
    from harness.inputs import open_suite

    home.configure_environment()
    try:
        config.stash[_SUITE] = open_suite(path)
    except KdhError as err:
        raise pytest.UsageError(f"--kdh-suite: {err}") from None


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselection, so they apply to these tests too
def pytest_collection_modifyitems(session, config, items):
    if _SUITE not in config.stash:
        return
    path = Path(config.getoption("kdh_suite")).resolve()
    if items:
        config.hook.pytest_deselected(items=list(items))
    items[:] = list(KdhSuiteFile.from_parent(session, path=path).collect())
