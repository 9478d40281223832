"""The idle-GPU alert engine, rules, persistence and store, on synthetic 1-minute windows."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from gridwatt.collector.alerts import (
    AlertEngine,
    AlertEvent,
    AlertRule,
    AlertsConfig,
    AlertStore,
    ScopeWindow,
    combine_windows,
    load_state,
    save_state,
)
from gridwatt.configfile import load_config

MIN_NS = 60 * 10**9
RACKS = ("rack-a", "rack-b", "rack-c")
IDLE_RACK = "rack-b"


def t(hh: int, mm: int) -> int:
    """ns of 2024-03-01 hh:mm UTC."""
    return int(datetime(2024, 3, 1, hh, mm, tzinfo=UTC).timestamp()) * 10**9


def rack_window(
    rack: str, start_ns: int, util_pct: float, gpu_count: int = 8, minute: int = 0
) -> ScopeWindow:
    """A 1-minute window; energy varies per minute so sums are not a trivial multiple."""
    node = f"{rack}-n1"
    power_kw = 0.06 + 0.35 * util_pct / 100 + 0.0001 * (minute % 7)
    it_kwh = gpu_count * power_kw / 60
    pue = 1.3 + 0.01 * (minute % 3)
    facility_kwh = it_kwh * pue
    intensity_kg_per_kwh = 0.35 + 0.02 * ((minute // 15) % 4)
    return ScopeWindow(
        scope_kind="rack",
        scope_name=rack,
        start_ns=start_ns,
        end_ns=start_ns + MIN_NS,
        gpu_count=gpu_count,
        nodes=(node,),
        gpus=tuple(f"{node}/{i}" for i in range(gpu_count)),
        mean_util_pct=util_pct,
        it_energy_kwh=it_kwh,
        facility_energy_kwh=facility_kwh,
        co2e_kg=facility_kwh * intensity_kg_per_kwh,
    )


def idle_util(minute: int) -> float:
    return 1.0 + (minute % 5) * 0.5  # 1.0 .. 3.0, mean about 2 %


def scenario(from_hh: int = 9, to_hh: int = 12) -> list[ScopeWindow]:
    """Three racks, 1-minute windows; rack-b idles 10:00–11:00 (about 2 %), the rest busy."""
    windows = []
    start, end = t(from_hh, 0), t(to_hh, 0)
    minute = 0
    while start < end:
        for rack in RACKS:
            idle = rack == IDLE_RACK and t(10, 0) <= start < t(11, 0)
            gpus = 6 if idle and minute % 11 == 0 else 8
            util = idle_util(minute) if idle else 85.0 + (minute % 3)
            windows.append(rack_window(rack, start, util, gpus, minute))
        start += MIN_NS
        minute += 1
    return windows


def idle_windows(windows: list[ScopeWindow], from_ns: int, to_ns: int) -> list[ScopeWindow]:
    return [w for w in windows if w.scope_name == IDLE_RACK and from_ns <= w.start_ns < to_ns]


def rel_close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)


RULE = AlertRule(name="rack-idle", scope="rack", util_below_pct=10, for_s=1800)


def test_one_rack_idle_hour_pending_firing_resolved_with_exact_waste() -> None:
    windows = scenario()
    engine = AlertEngine([RULE])
    events = engine.observe_all(windows)

    assert [(e.kind, e.scope_name) for e in events] == [
        ("pending", IDLE_RACK),
        ("firing", IDLE_RACK),
        ("resolved", IDLE_RACK),
    ]
    pending, firing, resolved = events
    assert pending.at_ns == t(10, 1) and pending.started_at_ns == t(10, 0)
    assert firing.at_ns == firing.fired_at_ns == t(10, 30)
    # recovery starts with the first busy window (11:00) and lasts resolve_after_s = 300
    assert resolved.at_ns == resolved.resolved_at_ns == t(11, 5)
    assert resolved.fired_at_ns == t(10, 30) and resolved.started_at_ns == t(10, 0)

    # independent computation: waste counts from the START of the idle stretch
    first30 = idle_windows(windows, t(10, 0), t(10, 30))
    all60 = idle_windows(windows, t(10, 0), t(11, 0))
    assert len(first30) == 30 and len(all60) == 60
    kwh30 = math.fsum(w.facility_energy_kwh for w in first30)
    kg30 = math.fsum(w.co2e_kg for w in first30)
    assert rel_close(firing.wasted_energy_kwh, kwh30)
    assert rel_close(firing.wasted_co2e_kg, kg30)
    assert rel_close(firing.waste_rate_kwh_per_h, kwh30 / 0.5)
    assert rel_close(firing.waste_rate_kg_per_h, kg30 / 0.5)
    assert firing.idle_s == 1800.0
    gpu_s = math.fsum(w.gpu_count * 60 for w in first30)
    assert rel_close(
        firing.mean_util_pct, math.fsum(w.mean_util_pct * w.gpu_count * 60 for w in first30) / gpu_s
    )

    assert rel_close(resolved.wasted_energy_kwh, math.fsum(w.facility_energy_kwh for w in all60))
    assert rel_close(resolved.wasted_co2e_kg, math.fsum(w.co2e_kg for w in all60))
    last30 = idle_windows(windows, t(10, 30), t(11, 0))
    assert rel_close(resolved.waste_rate_kwh_per_h, math.fsum(w.facility_energy_kwh for w in last30) / 0.5)
    assert rel_close(resolved.waste_rate_kg_per_h, math.fsum(w.co2e_kg for w in last30) / 0.5)
    assert resolved.idle_s == 3600.0
    assert resolved.gpus == tuple(f"rack-b-n1/{i}" for i in range(8)) and resolved.nodes == ("rack-b-n1",)
    assert engine.state_of("rack-idle", "rack", IDLE_RACK) == "inactive"


def test_busy_racks_emit_nothing() -> None:
    engine = AlertEngine([RULE])
    busy = [w for w in scenario() if w.scope_name != IDLE_RACK]
    assert engine.observe_all(busy) == []


def test_replayed_trace_fires_at_trace_times_whatever_the_feed_speed() -> None:
    a, b = AlertEngine([RULE]), AlertEngine([RULE])
    windows = scenario()
    ev_a = a.observe_all(windows)
    ev_b = []
    for i in range(0, len(windows), 17):  # batches, as a fast replay would deliver them
        ev_b.extend(b.observe_all(windows[i : i + 17]))
    assert ev_a == ev_b


def hover(start_ns: int, minutes: int, low: float, high: float, rack: str = IDLE_RACK) -> list[ScopeWindow]:
    return [
        rack_window(rack, start_ns + i * MIN_NS, low if i % 2 == 0 else high, minute=i)
        for i in range(minutes)
    ]


@pytest.mark.parametrize(("low", "high"), [(9.0, 11.0), (9.0, 15.0)])
def test_hovering_around_threshold_never_fires_or_flaps_to_firing(low: float, high: float) -> None:
    engine = AlertEngine([RULE])
    events = engine.observe_all(hover(t(9, 0), 180, low, high))
    kinds = [e.kind for e in events]
    assert "firing" not in kinds and "resolved" not in kinds
    # each short low stretch is a pending that is cancelled by the next window: once each
    assert kinds == ["pending", "cancelled"] * 90


@pytest.mark.parametrize(("low", "high"), [(9.0, 11.0), (9.0, 15.0), (15.0, 25.0), (19.0, 21.0)])
def test_hovering_after_firing_keeps_one_alert_until_really_busy(low: float, high: float) -> None:
    engine = AlertEngine([RULE])
    idle = [rack_window(IDLE_RACK, t(10, 0) + i * MIN_NS, 2.0, minute=i) for i in range(40)]
    events = engine.observe_all(idle)
    events += engine.observe_all(hover(t(10, 40), 120, low, high))
    assert [e.kind for e in events] == ["pending", "firing"]
    busy = [rack_window(IDLE_RACK, t(12, 40) + i * MIN_NS, 80.0, minute=i) for i in range(10)]
    later = engine.observe_all(busy)
    # the hover's last window (12:39) is `high`: above resolve_above_pct (20) it starts the recovery
    recovery_start = t(12, 39) if high > 20 else t(12, 40)
    assert [(e.kind, e.at_ns) for e in later] == [("resolved", recovery_start + 5 * MIN_NS)]


def test_resolve_needs_uninterrupted_recovery() -> None:
    engine = AlertEngine([RULE])
    ws = [rack_window(IDLE_RACK, t(10, 0) + i * MIN_NS, 2.0, minute=i) for i in range(30)]
    # 4 busy minutes, one 5 % minute (restarts recovery), then busy
    utils = [80.0] * 4 + [5.0] + [80.0] * 6
    ws += [rack_window(IDLE_RACK, t(10, 30) + i * MIN_NS, u, minute=i) for i, u in enumerate(utils)]
    events = engine.observe_all(ws)
    assert [(e.kind, e.at_ns) for e in events] == [
        ("pending", t(10, 1)),
        ("firing", t(10, 30)),
        ("resolved", t(10, 40)),  # recovery from 10:35, the first busy window after the 5 % one
    ]
    # the 5 % window is idle: it adds to the waste
    assert events[-1].idle_s == 31 * 60
    assert rel_close(
        events[-1].wasted_energy_kwh, math.fsum(w.facility_energy_kwh for w in [*ws[:30], ws[34]])
    )


def test_min_gpus_respected() -> None:
    rule = AlertRule(name="big-idle", scope="rack", min_gpus=4, for_s=600)
    engine = AlertEngine([rule])
    small = [rack_window("rack-a", t(10, 0) + i * MIN_NS, 1.0, gpu_count=3, minute=i) for i in range(30)]
    assert engine.observe_all(small) == []
    big = [rack_window("rack-c", t(10, 0) + i * MIN_NS, 1.0, gpu_count=4, minute=i) for i in range(30)]
    assert [(e.kind, e.at_ns) for e in engine.observe_all(big)] == [
        ("pending", t(10, 1)),
        ("firing", t(10, 10)),
    ]
    # dropping below min_gpus while firing counts as clear: resolves after resolve_after_s
    shrunk = [rack_window("rack-c", t(10, 30) + i * MIN_NS, 1.0, gpu_count=2, minute=i) for i in range(6)]
    assert [(e.kind, e.at_ns) for e in engine.observe_all(shrunk)] == [("resolved", t(10, 35))]


def test_repeated_and_out_of_order_windows_do_not_double_count() -> None:
    windows = [w for w in scenario(10, 11) if w.scope_name == IDLE_RACK]
    engine = AlertEngine([RULE])
    events = []
    for i, w in enumerate(windows):
        events += engine.observe(w)
        events += engine.observe(w)  # resend
        if i > 0:
            events += engine.observe(windows[i - 1])  # late duplicate
    assert [e.kind for e in events] == ["pending", "firing"]
    assert engine.ignored_windows == 60 + 59
    snap = engine.active_alerts()[0]
    assert snap.kind == "still_firing"
    assert rel_close(snap.wasted_energy_kwh, math.fsum(w.facility_energy_kwh for w in windows))
    assert snap.idle_s == 3600.0
    # a window overlapping the last one is ignored too
    overlap = rack_window(IDLE_RACK, t(11, 0) - MIN_NS // 2, 1.0)
    assert engine.observe(overlap) == [] and engine.ignored_windows == 120


def test_gap_cancels_pending_and_counts_toward_resolve() -> None:
    engine = AlertEngine([RULE])
    ws = [rack_window(IDLE_RACK, t(10, 0) + i * MIN_NS, 2.0, minute=i) for i in range(10)]
    ws += [rack_window(IDLE_RACK, t(10, 12) + i * MIN_NS, 2.0, minute=i) for i in range(40)]  # 2-minute gap
    events = engine.observe_all(ws)
    assert [(e.kind, e.at_ns) for e in events] == [
        ("pending", t(10, 1)),
        ("cancelled", t(10, 10)),
        ("pending", t(10, 13)),
        ("firing", t(10, 42)),
    ]
    assert events[-1].started_at_ns == t(10, 12)
    # no data for 7 minutes, then idle again: the gap resolved the alert at 10:52 + 5 min
    again = engine.observe(rack_window(IDLE_RACK, t(10, 59), 2.0))
    assert [(e.kind, e.at_ns) for e in again] == [("resolved", t(10, 57)), ("pending", t(11, 0))]


def test_short_gap_while_firing_does_not_resolve() -> None:
    engine = AlertEngine([RULE])
    ws = [rack_window(IDLE_RACK, t(10, 0) + i * MIN_NS, 2.0, minute=i) for i in range(31)]
    ws += [rack_window(IDLE_RACK, t(10, 34) + i * MIN_NS, 2.0, minute=i) for i in range(10)]  # 3-minute gap
    assert [e.kind for e in engine.observe_all(ws)] == ["pending", "firing"]
    assert engine.state_of("rack-idle", "rack", IDLE_RACK) == "firing"
    assert engine.active_alerts()[0].idle_s == 41 * 60


def job_window(job: str, start_ns: int, util: float) -> ScopeWindow:
    return ScopeWindow(
        "job",
        job,
        start_ns,
        start_ns + MIN_NS,
        4,
        ("n1",),
        tuple(f"n1/{i}" for i in range(4)),
        util,
        0.004,
        0.005,
        0.002,
    )


def test_advance_to_resolves_a_job_that_stopped_reporting() -> None:
    rule = AlertRule(name="job-idle", scope="job", for_s=600, resolve_after_s=300)
    engine = AlertEngine([rule], retain_inactive_s=3600)
    events = engine.observe_all(job_window("job 1234", t(10, 0) + i * MIN_NS, 3.0) for i in range(15))
    assert [(e.kind, e.at_ns) for e in events] == [("pending", t(10, 1)), ("firing", t(10, 10))]
    assert engine.advance_to(t(10, 17)) == []
    assert [(e.kind, e.at_ns) for e in engine.advance_to(t(10, 25))] == [("resolved", t(10, 20))]
    assert engine.advance_to(t(11, 30)) == []
    assert engine.to_dict()["tracks"] == []  # forgotten after retain_inactive_s


def test_group_and_cluster_scopes() -> None:
    group_rule = AlertRule(
        name="train-idle", scope="group", group="partition-train", racks=["rack-a", "rack-b"]
    )
    cluster_rule = AlertRule(name="cluster-idle", scope="cluster", util_below_pct=5, for_s=120)
    rack_filter = AlertRule(name="rack-c-idle", scope="rack", racks=["rack-c"], for_s=60)
    engine = AlertEngine([group_rule, cluster_rule, rack_filter])
    events: list[AlertEvent] = []
    for i in range(3):
        start = t(10, 0) + i * MIN_NS
        a, b = rack_window("rack-a", start, 2.0, minute=i), rack_window("rack-b", start, 6.0, minute=i)
        grp = combine_windows("group", "partition-train", [a, b])
        assert rel_close(grp.mean_util_pct, 4.0) and grp.gpu_count == 16
        assert rel_close(grp.facility_energy_kwh, a.facility_energy_kwh + b.facility_energy_kwh)
        events += engine.observe_all([a, b, grp, combine_windows("cluster", "cluster", [a, b])])
    assert [(e.rule, e.kind, e.at_ns) for e in events] == [
        ("train-idle", "pending", t(10, 1)),
        ("cluster-idle", "pending", t(10, 1)),
        ("cluster-idle", "firing", t(10, 2)),
    ]


def test_rule_validation_names_fields() -> None:
    with pytest.raises(ValidationError) as exc:
        AlertRule(name="x", scope="rack", util_below_pct=30, resolve_above_pct=20)
    assert "resolve_above_pct (20)" in str(exc.value) and "util_below_pct (30)" in str(exc.value)
    with pytest.raises(ValidationError, match="racks and/or nodes"):
        AlertRule(name="g", scope="group")
    with pytest.raises(ValidationError, match="nodes is only valid"):
        AlertRule(name="r", scope="rack", nodes=["n1"])
    with pytest.raises(ValidationError, match="util_below_pct"):
        AlertRule(name="r", scope="rack", util_below_pct=120)
    with pytest.raises(ValidationError, match="used twice"):
        AlertsConfig(rules=[RULE, RULE])
    with pytest.raises(ValidationError, match="http"):
        AlertsConfig.model_validate({"sinks": {"webhooks": [{"url": "ftp://x"}]}})
    assert AlertRule(name="d", scope="rack", util_below_pct=12).resolve_above_pct == 22


def test_sample_toml_loads(tmp_path: Path) -> None:
    sample = Path(__file__).parents[2] / "collector" / "alerts" / "sample.toml"
    cfg = tmp_path / "c.toml"
    cfg.write_text(sample.read_text())
    from pydantic import BaseModel

    class Top(BaseModel):
        alerts: AlertsConfig

    loaded = load_config(cfg, Top, environ={}).alerts
    assert loaded.state_file == Path("/var/lib/gridwatt/alerts-state.json")
    cfg.write_text(sample.read_text().replace("/var/lib/gridwatt/", "state/"))
    assert load_config(cfg, Top, environ={}).alerts.state_file == tmp_path / "state" / "alerts-state.json"
    assert [r.name for r in loaded.rules] == [
        "rack-idle", "partition-train-idle", "job-idle", "slurm-job-idle", "slurm-user-idle"
    ]
    assert loaded.rules[0].resolve_above_pct == 20
    assert loaded.sinks.alertmanager is not None and loaded.sinks.webhooks[0].retries == 4


def test_restart_neither_repeats_firing_nor_loses_resolve(tmp_path: Path) -> None:
    windows = scenario()
    reference = AlertEngine([RULE]).observe_all(windows)
    state = tmp_path / "alerts-state.json"
    cut = next(i for i, w in enumerate(windows) if w.start_ns == t(10, 40))

    engine, store = load_state(state, [RULE])  # no file yet: fresh
    first = engine.observe_all(windows[:cut])
    store.apply(first)
    assert [e.kind for e in first] == ["pending", "firing"]
    save_state(state, engine, store)
    assert not list(tmp_path.glob(".*tmp"))  # temp file renamed away
    json.loads(state.read_text())

    engine2, store2 = load_state(state, [RULE])
    rest = engine2.observe_all(windows[cut:])
    assert [e.kind for e in rest] == ["resolved"]
    assert rest[0] == reference[-1]  # same numbers as without the restart
    store2.apply(rest)
    assert [a["state"] for a in store2.recent_alerts()] == ["resolved"]


def test_restart_in_the_middle_of_recovery(tmp_path: Path) -> None:
    windows = scenario()
    state = tmp_path / "s.json"
    cut = next(i for i, w in enumerate(windows) if w.start_ns == t(11, 3))
    engine = AlertEngine([RULE])
    engine.observe_all(windows[:cut])
    save_state(state, engine)
    engine2, _ = load_state(state, [RULE])
    events = engine2.observe_all(windows[cut:])
    assert [(e.kind, e.at_ns) for e in events] == [("resolved", t(11, 5))]
    # resending already-seen windows after the restart changes nothing
    assert engine2.observe_all(windows[:cut]) == []


def test_store_recent_alerts_fields() -> None:
    store = AlertStore(keep_resolved=1)
    engine = AlertEngine([RULE])
    windows = scenario()
    store.apply(engine.observe_all(windows))
    idle_a = [rack_window("rack-a", t(12, 0) + i * MIN_NS, 1.0, minute=i) for i in range(31)]
    store.apply(engine.observe_all(idle_a))
    store.apply(engine.active_alerts())
    recent = store.recent_alerts()
    assert [(a["scope"], a["state"]) for a in recent] == [("rack-a", "firing"), (IDLE_RACK, "resolved")]
    res = recent[1]
    assert res["started_at"] == "2024-03-01T10:00:00Z"
    assert res["fired_at"] == "2024-03-01T10:30:00Z"
    assert res["resolved_at"] == "2024-03-01T11:05:00Z"
    assert res["duration_s"] == 3600.0 and res["rule"] == "rack-idle" and res["scope_kind"] == "rack"
    assert set(res) >= {
        "mean_util_pct",
        "wasted_energy_kwh",
        "wasted_co2e_kg",
        "waste_rate_kwh_per_h",
        "waste_rate_kg_per_h",
        "gpus",
        "nodes",
    }
    assert recent[0]["resolved_at"] is None and recent[0]["duration_s"] == 31 * 60
    json.dumps(recent)
    # keep_resolved=1: a second resolve pushes the first out
    busy_a = [rack_window("rack-a", t(12, 31) + i * MIN_NS, 90.0, minute=i) for i in range(5)]
    store.apply(engine.observe_all(busy_a))
    assert [(a["scope"], a["state"]) for a in store.recent_alerts()] == [("rack-a", "resolved")]


def test_window_contract_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="end_ns"):
        ScopeWindow("rack", "r", 10, 10, 1, (), (), 1.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="mean_util_pct"):
        ScopeWindow("rack", "r", 0, 10, 1, (), (), float("nan"), 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="scope_kind"):
        ScopeWindow("node", "r", 0, 10, 1, (), (), 1.0, 0.0, 0.0, 0.0)
