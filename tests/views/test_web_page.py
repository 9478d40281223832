"""/ui/ in a real browser (Debian's headless Chromium through chromedriver) after a replay."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridwatt.demo import EVAL_JOB, JOB
from tests.views.servers import Replay

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("Debian's chromium and chromium-driver are needed (scripts/setup.sh installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument("--window-size=1200,1400")
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER,
                                      log_output=str(tmp_path_factory.mktemp("chromedriver") / "log"))
    driver = webdriver.Chrome(options=opts, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def load(browser: webdriver.Chrome, url: str, shot: Path) -> None:
    """Load a page, save its screenshot, and fail on any console message of level SEVERE/WARNING."""
    browser.get(url)
    assert browser.find_element(By.TAG_NAME, "h1").text
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 1000
    problems = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert problems == [], problems


def cells(browser: webdriver.Chrome, row_css: str) -> dict[str, tuple[float, str]]:
    """data-key → (exact value, shown text) of the numeric cells in the row(s) matching ``row_css``."""
    out = {}
    for td in browser.find_elements(By.CSS_SELECTOR, f"{row_css} td[data-key]"):
        out[td.get_attribute("data-key")] = (float(td.get_attribute("data-value")), td.text)
    return out


def test_overview_racks_and_zones_equal_the_api(replay: Replay, browser: webdriver.Chrome,
                                                tmp_path: Path) -> None:
    load(browser, replay.url + "/ui/", tmp_path / "overview.png")
    racks = replay.get("/v1/racks")["racks"]
    for r in racks:
        shown = cells(browser, f'#racks tr[data-name="{r["rack"]}"]')
        assert shown["it_energy_kwh"] == (r["it_energy_kwh"], f"{r['it_energy_kwh']:.3f}")
        assert shown["co2e_kg"] == (r["co2e_kg"], f"{r['co2e_kg']:.3f}")
        assert shown["mean_pue"][0] == r["mean_pue"]
        assert shown["gpu_hours"][0] == r["gpu_hours"]
    zone = cells(browser, '#zones tr[data-name="DE"]')
    assert abs(zone["it_energy_kwh"][0] - sum(r["it_energy_kwh"] for r in racks)) < 1e-9
    assert abs(zone["co2e_kg"][0] - sum(r["co2e_kg"] for r in racks)) < 1e-9
    firing = [a for a in replay.get("/v1/alerts")["alerts"] if a["state"] == "firing"]
    links = browser.find_elements(By.CSS_SELECTOR, "a.firing")
    assert [a.text for a in links] == ([f"{len(firing)} firing alert(s)"] if firing else [])


def test_jobs_list_equals_the_job_reports(replay: Replay, browser: webdriver.Chrome, tmp_path: Path) -> None:
    load(browser, replay.url + "/ui/jobs", tmp_path / "jobs.png")
    rows = browser.find_elements(By.CSS_SELECTOR, "#jobs tr[data-name]")
    names = [tr.get_attribute("data-name") for tr in rows]
    assert sorted(names) == sorted([JOB, EVAL_JOB, "unattributed"])
    for job in names:
        report = replay.get("/v1/jobs/" + urllib.parse.quote(job))
        shown = cells(browser, f'#jobs tr[data-name="{job}"]')
        assert abs(shown["it_energy_kwh"][0] - report["it_energy_kwh"]) <= 1e-12 * report["it_energy_kwh"]
        assert shown["it_energy_kwh"][1] == f"{report['it_energy_kwh']:.3f}"
        assert abs(shown["co2e_kg"][0] - report["co2e_kg"]) <= 1e-12 * report["co2e_kg"]
        assert abs(shown["gpu_hours"][0] - report["gpu_hours"]) <= 1e-12 * report["gpu_hours"]


def test_job_page_report_and_hourly_charts(replay: Replay, browser: webdriver.Chrome, tmp_path: Path) -> None:
    report = replay.get("/v1/jobs/" + JOB)
    load(browser, replay.url + "/ui/jobs/" + JOB, tmp_path / "job.png")
    shown = cells(browser, "#report tr")
    for key in ("it_energy_kwh", "facility_energy_kwh", "co2e_kg", "mean_pue", "gpu_hours",
                "idle_energy_kwh"):
        assert shown[key][0] == report[key], key
    assert shown["gpu_count"] == (report["gpu_count"], str(report["gpu_count"]))
    assert shown["co2e_kg"][1] == f"{report['co2e_kg']:.3f}"
    hours = int(replay.hours)
    for chart in ("chart-power", "chart-util", "chart-intensity", "chart-emissions"):
        svg = browser.find_element(By.ID, chart)
        assert svg.size["width"] > 300 and svg.size["height"] > 100
        points = svg.find_elements(By.CSS_SELECTOR, "[data-value]")
        assert len(points) == hours, chart
    bars = browser.find_elements(By.CSS_SELECTOR, "#chart-emissions rect.bar")
    total_kg = sum(float(b.get_attribute("data-value")) for b in bars)
    assert abs(total_kg - report["co2e_kg"]) <= 1e-9 * report["co2e_kg"]  # the hours add up to the job
    points = browser.find_elements(By.CSS_SELECTOR, "#chart-power .pt")
    power = [float(p.get_attribute("data-value")) for p in points]
    assert abs(sum(power) * 3600 / 3.6e6 - report["it_energy_kwh"]) <= 1e-9 * report["it_energy_kwh"]


def test_alerts_page_equals_the_api(replay: Replay, browser: webdriver.Chrome, tmp_path: Path) -> None:
    alerts = replay.get("/v1/alerts")["alerts"]
    load(browser, replay.url + "/ui/alerts", tmp_path / "alerts.png")
    rows = browser.find_elements(By.CSS_SELECTOR, "#alerts tr")[1:]
    assert len(rows) == len(alerts) > 0
    for row, a in zip(rows, alerts, strict=True):
        tds = row.find_elements(By.TAG_NAME, "td")
        assert tds[0].text == a["rule"] and tds[1].text == a["state"]
        wasted = row.find_element(By.CSS_SELECTOR, 'td[data-key="wasted_energy_kwh"]')
        assert float(wasted.get_attribute("data-value")) == a["wasted_energy_kwh"]


def test_unknown_job_is_a_404_page(replay: Replay) -> None:
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(replay.url + "/ui/jobs/no-such-job", timeout=30)
    assert err.value.code == 404 and b"no samples stored for job" in err.value.read()


@pytest.mark.e2e
def test_demo_serve_prints_the_web_page_address() -> None:
    import re
    import signal
    import subprocess
    import sys
    import urllib.request

    demo = subprocess.Popen([sys.executable, "-m", "gridwatt.cli", "demo", "--hours", "1", "--serve"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert demo.stdout is not None
        lines = []
        match = None
        for line in demo.stdout:
            lines.append(line)
            match = re.search(r"\[demo\] web page: (http://127\.0\.0\.1:\d+)/ui/ ", line)
            if match:
                break
        assert match, "".join(lines)
        with urllib.request.urlopen(match.group(1) + "/ui/", timeout=30) as resp:
            page = resp.read().decode()
        assert resp.status == 200 and 'data-name="rack-a"' in page and 'data-name="rack-b"' in page
        with urllib.request.urlopen(f"{match.group(1)}/ui/jobs/{JOB}", timeout=30) as resp:
            assert resp.status == 200 and 'id="chart-emissions"' in resp.read().decode()
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            rc = demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise
    assert rc == 0
