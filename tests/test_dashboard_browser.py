"""The dashboard in a real browser: `kdh dashboard` started as a subprocess on a free localhost port
against a store a real `kdh gate` filled, headless Chromium (Debian's chromium and chromium-driver;
.ci/run installs them) loads it, and the scorecard shows a known domain and number.

Run as a script, it takes the README's screenshot of the scorecard view:

    python tests/test_dashboard_browser.py --screenshot docs/dashboard-scorecard.png [--tracking-uri URI]
    python tests/test_dashboard_browser.py --screenshot docs/sweep.png --view Sweep --tracking-uri URI

(without --tracking-uri it first fills a store with `kdh loop` on the tiny demo world).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALL = "apt-get install -y chromium chromium-driver (.ci/run does)"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_dashboard(uri: str, port: int, log: Path) -> subprocess.Popen:
    """`kdh dashboard` in its own process group (it starts Streamlit as a child), answering on
    /_stcore/health, or an error with its log."""
    kdh = Path(sys.executable).with_name("kdh")
    cmd = [str(kdh)] if kdh.is_file() else [sys.executable, "-m", "harness.cli"]
    out = log.open("w")
    proc = subprocess.Popen([*cmd, "dashboard", "--tracking-uri", uri, "--port", str(port)], stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"kdh dashboard exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as reply:
                if reply.read().strip() == b"ok":
                    return proc
        except OSError:
            time.sleep(0.5)
    stop(proc)
    raise AssertionError(f"kdh dashboard did not answer on port {port} within 90 s:\n{log.read_text()}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the group: kdh and the Streamlit server it started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def chromium(width: int = 1500, height: int = 1300):
    """Headless Chromium through Debian's chromedriver: no sandbox (CI runs as root), no GPU, and
    none of the browser's own network traffic (updates, sync, field trials)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
    if browser is None or not Path(driver).is_file():
        raise AssertionError(f"headless Chromium is needed for this test: {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--no-first-run", "--hide-scrollbars",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def open_scorecard(driver, url: str, timeout: float = 60) -> str:
    """Load the app and wait until the scorecard's tiles and chart are drawn; the page's text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]')
        and d.find_elements(By.CSS_SELECTOR, "canvas, svg.marks")
        and not d.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'))  # no run in progress
    time.sleep(1.0)  # the chart's last frame
    return driver.find_element(By.TAG_NAME, "body").text


def open_view(driver, view: str, heading: str, timeout: float = 60) -> str:
    """Pick a view in the sidebar as a person does (a click on its label) and wait for its heading
    and a drawn chart; the page's text, then the texts drawn in its charts."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    sidebar = driver.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"]')
    sidebar.find_element(By.XPATH, f".//label[.//p[normalize-space()='{view}']]").click()
    WebDriverWait(driver, timeout).until(
        lambda d: heading in d.find_element(By.TAG_NAME, "body").text
        and d.find_elements(By.CSS_SELECTOR, "canvas, svg.marks")
        and not d.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'))
    time.sleep(1.0)
    charts = [t.text for t in driver.find_elements(By.CSS_SELECTOR, "svg.marks text")]
    return driver.find_element(By.TAG_NAME, "body").text + "\n" + "\n".join(charts)


# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tiny_world, lenient_suite, tmp_path_factory):
    from harness.cli import main

    folder = tmp_path_factory.mktemp("dashboard-browser")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    code = main(["gate", "--suite", str(lenient_suite), "--teacher", str(tiny_world.teacher_dir),
                 "--candidate", str(tiny_world.student_dir), "--champion", str(tiny_world.student_dir),
                 "--tracking-uri", uri, "--out", str(folder / "gate")])
    assert code in (0, 1)  # a verdict either way: what the page must show is its numbers
    proc = start_dashboard(uri, free_port(), folder / "dashboard.log")
    yield proc, folder
    stop(proc)


def test_the_scorecard_loads_in_headless_chromium(served, tmp_path):
    from harness.scorecard import Scorecard

    proc, folder = served
    port = proc.args[proc.args.index("--port") + 1]
    card = Scorecard.load(folder / "gate")
    retention = card.domains.set_index(["model", "domain"])["retention"]["candidate"]
    driver = chromium()
    try:
        text = open_scorecard(driver, f"http://127.0.0.1:{port}")
        shot = tmp_path / "scorecard.png"
        assert driver.save_screenshot(str(shot))
        analytics = open_view(driver, "Analytics", "Agreement with the teacher and calibration")
    finally:
        driver.quit()
    assert "Scorecard" in text and "Traceback" not in text
    for domain, value in retention.items():
        assert domain in text and f"{value:.3f}" in text  # each domain's tile: the candidate's retention
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    # The Analytics view: the candidate's top-1 agreement with the teacher per domain, as the gate measured it.
    assert "Traceback" not in analytics and "Recommendations" in analytics
    assert "Top-1 agreement with the teacher" in analytics  # the chart's title, drawn
    kl = card.agreement_domains.set_index(["model", "domain"])["kl_bits"]["candidate"]
    for domain, value in kl.items():  # each bar's label: the model and its KL from the teacher
        assert domain in analytics and f"candidate · KL {value:.2f}" in analytics


# --------------------------------------------------------------------------------------------
# The README's screenshot


def _demo_store(folder: Path) -> str:
    """A store filled by real commands on the tiny demo world: two loops (a promotion each)."""
    os.environ.update(KDH_HOME=str(folder / "home"), KDH_DEMO_SIZE="tiny")
    from harness.cli import main

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    for _ in range(2):
        main(["loop", "--steps", "40", "--interval", "10", "--tracking-uri", uri])
    return uri


def screenshot(path: Path, uri: str | None, width: int, height: int, view: str | None = None) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kdh-screenshot-") as tmp:
        uri = uri or _demo_store(Path(tmp))
        proc = start_dashboard(uri, free_port(), Path(tmp) / "dashboard.log")
        try:
            driver = chromium(width, height)
            try:
                open_scorecard(driver, f"http://127.0.0.1:{proc.args[proc.args.index('--port') + 1]}")
                if view:  # another view, e.g. Sweep (docs/sweep.md's figure), once it has drawn a chart
                    marks = {"Sweep": "Retention per domain", "Analytics": "Agreement with the teacher"}
                    open_view(driver, view, marks.get(view, view))
                path.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(path))
            finally:
                driver.quit()
        finally:
            stop(proc)
    print(f"wrote {path}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="screenshot of the dashboard's scorecard view")
    parser.add_argument("--screenshot", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--tracking-uri", help="the store to show (default: one filled by `kdh loop` on the tiny world)")
    parser.add_argument("--size", default="1500x1250", help="window size, WIDTHxHEIGHT")
    parser.add_argument("--view", help="the view to take instead of the scorecard (e.g. Sweep, Analytics)")
    args = parser.parse_args()
    w, h = map(int, args.size.split("x"))
    sys.path.insert(0, str(REPO))
    screenshot(args.screenshot, args.tracking_uri, w, h, args.view)
