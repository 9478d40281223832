"""Issue 16, defect 1: a firing alert's duration and waste so far keep growing in /v1/alerts."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from gridwatt.collector.alerts import AlertEngine, AlertsConfig, AlertStore, save_state
from gridwatt.collector.alerts.monitor import AlertMonitor
from gridwatt.collector.config import InfluxConfig
from gridwatt.collector.store import InfluxStore
from gridwatt.report import format_alerts
from tests.collector.test_alerts_engine import IDLE_RACK, RULE, idle_windows, scenario, t

CONFIG = {"rules": [RULE.model_dump()]}


def _firing_record(store: AlertStore) -> dict[str, object]:
    (record,) = [a for a in store.recent_alerts() if a["state"] == "firing"]
    return record


async def test_evaluation_refreshes_a_firing_alert(tmp_path: Path) -> None:
    monitor = AlertMonitor(AlertsConfig.model_validate(CONFIG), InfluxStore(InfluxConfig()), 60)
    windows = [w for w in scenario() if w.start_ns < t(10, 50)]  # rack-b idle since 10:00, fired 10:30
    monitor.alerts.apply(monitor.engine.observe_all([w for w in windows if w.start_ns < t(10, 30)]))
    fired = _firing_record(monitor.alerts)
    assert fired["duration_s"] == 1800.0
    # twenty more idle minutes are evaluated: no event (still firing), yet the numbers move on
    assert [e for e in monitor.engine.observe_all([w for w in windows if w.start_ns >= t(10, 30)])
            if e.kind != "still_firing"] == []
    await monitor.evaluate()  # no rack has reported: nothing read, but open alerts are refreshed
    now = _firing_record(monitor.alerts)
    idle50 = idle_windows(windows, t(10, 0), t(10, 50))
    assert now["duration_s"] == 50 * 60.0
    assert math.isclose(float(now["wasted_energy_kwh"]), math.fsum(w.facility_energy_kwh for w in idle50))
    assert math.isclose(float(now["wasted_co2e_kg"]), math.fsum(w.co2e_kg for w in idle50))
    assert now["fired_at"] == fired["fired_at"] == "2024-03-01T10:30:00Z"


def test_restart_shows_the_state_files_numbers(tmp_path: Path) -> None:
    # A state file written when only the firing event reached the store (as before the fix): the
    # engine holds 3,600 s of idling, the store the 1,800 s of the moment it fired.
    engine, store = AlertEngine([RULE]), AlertStore()
    windows = scenario()
    store.apply(engine.observe_all([w for w in windows if w.start_ns < t(10, 30)]))
    engine.observe_all([w for w in windows if t(10, 30) <= w.start_ns < t(11, 0)])
    state = tmp_path / "alerts-state.json"
    save_state(state, engine, store)
    cfg = AlertsConfig.model_validate({**CONFIG, "state_file": str(state)})
    monitor = AlertMonitor(cfg, InfluxStore(InfluxConfig()), 60)
    record = _firing_record(monitor.alerts)
    assert record["duration_s"] == 3600.0
    idle60 = idle_windows(windows, t(10, 0), t(11, 0))
    assert math.isclose(float(record["wasted_energy_kwh"]), math.fsum(w.facility_energy_kwh for w in idle60))
    text = format_alerts({"alerts": [record], "rules": 1})
    assert f"{IDLE_RACK}  since 2024-03-01T10:00:00Z" in text and "for 60 min" in text


def test_an_unwritable_state_file_is_one_error_line_not_a_traceback_per_evaluation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "gone" / "alerts-state.json"
    cfg = AlertsConfig.model_validate({**CONFIG, "state_file": str(state)})
    monitor = AlertMonitor(cfg, InfluxStore(InfluxConfig()), 60)
    (tmp_path / "gone").write_text("a file where the folder should be")
    with caplog.at_level(logging.INFO, logger="gridwatt.collector.alerts"):
        assert monitor.save_state() is False
        assert monitor.save_state() is False
        (tmp_path / "gone").unlink()
        assert monitor.save_state() is True
    lines = [r for r in caplog.records if "alerts.state_file" in r.getMessage()]
    assert [r.levelname for r in lines] == ["ERROR", "INFO"]
    assert lines[0].getMessage().startswith(f"alerts.state_file {state} cannot be written (")
    assert not any(r.exc_info for r in caplog.records)
    assert state.exists()
