"""Which replica evaluates alerts: the lease rule (pure), and what replicas share through a real InfluxDB."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError

from gridwatt.collector.alerts import AlertsConfig, shared
from gridwatt.collector.alerts.election import ElectedRole, Lease
from gridwatt.collector.alerts.model import AlertEvent
from gridwatt.collector.alerts.monitor import AlertMonitor
from gridwatt.collector.config import InfluxConfig
from gridwatt.collector.store import InfluxStore
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from tests.collector.test_alerts_engine import RULE

LEASE = 10.0


def beat(replica: str, n: int, leader: bool = False, inc: str = "x") -> shared.Beat:
    return shared.Beat(replica, inc, n, leader)


def lease(me: str, started: float = 0.0) -> Lease:
    return Lease(me, LEASE, started)


def tick(lz: Lease, now: float, *beats: shared.Beat, write_ok: bool = True) -> bool:
    if write_ok:
        lz.last_write_ok = now
    lz.observe(list(beats), now)
    return lz.decide(now)


def test_lowest_live_id_leads_after_watching_a_full_lease() -> None:
    a, b = lease("a"), lease("b")
    for now in range(10):  # both watch; nobody leads before a full lease
        assert not tick(a, now, beat("b", now)) and not tick(b, now, beat("a", now))
    assert tick(a, 10, beat("b", 10))  # a: lowest live id, no claimant, watched 10 s
    assert not tick(b, 10, beat("a", 10, leader=True))  # b sees a's claim
    for now in range(11, 40):  # stable: a keeps it, b never claims
        assert tick(a, now, beat("b", now)) and not tick(b, now, beat("a", now, leader=True))


def test_successor_waits_a_full_lease_after_the_leaders_last_heartbeat() -> None:
    b = lease("b")
    for now in range(20):
        assert not tick(b, now, beat("a", now, leader=True))
    # a dies at 19: its heartbeat stops changing; b keeps reading the same point
    for now in range(20, 29):
        assert not tick(b, now, beat("a", 19, leader=True)), now
    assert tick(b, 29, beat("a", 19, leader=True))  # 29 - 19 = lease_s


def test_a_restarted_lower_id_does_not_take_the_lead_back() -> None:
    b = lease("b")
    b.leader = True
    a = lease("a", started=100.0)  # a comes back: b leads now (sticky)
    for now in range(100, 140):
        assert tick(b, now, beat("a", now)), now
        assert not tick(a, now, beat("b", now, leader=True)), now


def test_a_leader_that_leaves_gracefully_is_replaced_at_the_next_tick() -> None:
    b = lease("b")
    for now in range(20):
        assert not tick(b, now, beat("a", now, leader=True))
    assert tick(b, 20, shared.Beat("a", "x", 20, leader=False, leaving=True))


def test_two_claimants_the_higher_id_steps_down() -> None:
    b = lease("b")
    b.leader = True
    assert not tick(b, 5, beat("a", 5, leader=True))


def test_a_leader_that_cannot_write_its_heartbeat_steps_down_after_half_a_lease() -> None:
    a = lease("a")
    a.leader = True
    assert tick(a, 50)
    assert tick(a, 54.9, write_ok=False)  # 4.9 s < lease_s / 2
    assert not a.holds(55.0) and not tick(a, 55.0, write_ok=False)


def test_a_restart_with_a_new_incarnation_counts_as_a_heartbeat() -> None:
    b = lease("b")
    tick(b, 0, beat("a", 7, leader=True, inc="old"))
    for now in range(1, 15):  # a restarted: its counter starts over at a value seen before
        assert not tick(b, now, beat("a", 7 if now == 9 else now, leader=now < 9, inc="new")), now


def test_lease_must_span_three_heartbeats() -> None:
    with pytest.raises(ValidationError, match=r"lease_s \(5\) must be at least 3 x heartbeat_s \(2\)"):
        AlertsConfig.model_validate({"evaluate": "elected", "lease_s": 5, "heartbeat_s": 2})
    with pytest.raises(ValidationError, match="evaluate"):
        AlertsConfig.model_validate({"evaluate": "sometimes"})


async def test_never_does_not_evaluate() -> None:
    cfg = AlertsConfig.model_validate({"rules": [RULE.model_dump()], "evaluate": "never"})
    monitor = AlertMonitor(cfg, InfluxStore(InfluxConfig()), 60, replica="r9")
    monitor.note("n1", "rack-a", 0, 10**12)
    assert not monitor.role.evaluating() and monitor.role.replica == "r9"
    assert await monitor.evaluate() == []


def test_state_snapshot_takes_the_newest_complete_seq() -> None:
    state = {"engine": {"x": "y" * 10}}
    text = json.dumps(state, sort_keys=True, separators=(",", ":"))
    rows = [{"seq": 4, "snap": "a", "parts": 2, "part": "00001", "json": text[8:]},
            {"seq": 4, "snap": "b", "parts": 2, "part": "00000", "json": "{\"other"},  # a second writer
            {"seq": 4, "snap": "a", "parts": 2, "part": "00000", "json": text[:8]},
            {"seq": 5, "snap": "c", "parts": 3, "part": "00000", "json": "{"}]  # a torn newer write
    assert shared.assemble_state(rows) == (4, state)
    assert shared.assemble_state(rows[3:]) is None


def test_progress_merges_replicas_per_node() -> None:
    cols = ["time", "rack", "end_ns", "first_ns", "seen_unix_s"]
    result = {"series": [
        {"tags": {"node": "n1", "replica": "c0"}, "columns": cols, "values": [[0, "r1", 500, 100, 10.0]]},
        {"tags": {"node": "n1", "replica": "c1"}, "columns": cols, "values": [[0, "r1", 900, 300, 20.0]]},
    ]}
    assert shared.parse_progress(result) == {"n1": shared.NodeProgress("n1", "r1", 900, 100, 20.0)}


@pytest.fixture
async def store(influxdb: LocalInfluxDB, database: str) -> AsyncIterator[InfluxStore]:
    s = InfluxStore(InfluxConfig(url=influxdb.url, database=database))
    await s.start()
    yield s
    await s.close()


def event(kind: str, started_ns: int, scope: str = "rack-b") -> AlertEvent:
    return AlertEvent(kind=kind, rule="rack-idle", severity="warning", scope_kind="rack", scope_name=scope,
                      at_ns=started_ns + 1800 * 10**9, started_at_ns=started_ns, fired_at_ns=None,
                      resolved_at_ns=None, gpus=("b1/0",), nodes=("b1",), mean_util_pct=2.0, idle_s=1800.0,
                      wasted_energy_kwh=0.1, wasted_co2e_kg=0.03, waste_rate_kwh_per_h=0.2,
                      waste_rate_kg_per_h=0.06, util_below_pct=10.0, for_s=1800.0)


async def test_shared_points_round_trip_through_influxdb(store: InfluxStore) -> None:
    t0 = 1_650_000_000 * 10**9
    # a state of three parts survives, and a newer one replaces it
    big = {"engine": {"blob": "é" * (2 * shared.STATE_PART_CHARS + 5)}, "monitor": {"racks": {"r1": t0}}}
    await shared.write_state(store, 1, big)
    assert await shared.read_state(store) == (1, big)
    await shared.write_state(store, 2, {"engine": {}})
    assert await shared.read_state(store) == (2, {"engine": {}})
    assert await shared.read_state_seq(store) == 2
    # heartbeats: the newest per replica
    await shared.write_beat(store, beat("c0", 1), "elected")
    await shared.write_beat(store, beat("c0", 2, leader=True), "elected")
    await shared.write_beat(store, beat("c1", 1), "elected")
    assert sorted(await shared.read_beats(store, 15), key=lambda b: b.replica) == [
        beat("c0", 2, leader=True), beat("c1", 1)]
    # the event log: the same change written twice is one point; delivered ids are found
    fired, again, other = event("firing", t0), event("firing", t0), event("firing", t0 + 3600 * 10**9)
    await shared.write_events(store, [fired], "c0")
    await shared.write_events(store, [again], "c1")
    assert await shared.delivered_ids(store, [again, other]) == {fired.event_id}
    (result,) = await store.query('SELECT count("event_id") FROM "alert_event"')
    assert result["series"][0]["values"][0][1] == 1


async def test_a_new_leader_drops_events_the_log_holds(store: InfluxStore) -> None:
    cfg = AlertsConfig.model_validate({"rules": [RULE.model_dump()], "evaluate": "elected",
                                       "lease_s": 3, "heartbeat_s": 1})
    monitor = AlertMonitor(cfg, store, 60, replica="c1")
    assert isinstance(monitor.role, ElectedRole)
    t0 = 1_650_000_000 * 10**9
    sent, new = event("firing", t0), event("resolved", t0)
    await shared.write_events(store, [sent], "c0")
    assert await monitor._undelivered([sent, new]) == [new]
