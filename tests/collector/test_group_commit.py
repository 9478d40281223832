"""Group commit (collector/group_commit.py): one InfluxDB write carries many callers' lines.

Against a real InfluxDB 1.x (requests counted by tests/influx_front.py or the store's own
metrics): concurrent callers share requests and every point is stored; a bad line costs only
its caller, at its own index; a failed write fails every caller of it; a cancelled caller
leaves the others whole. Then through a real collector: agents' batches ride in shared
requests and are acknowledged only once stored. The coalescing rules themselves (groups,
slots, close) are checked on the GroupCommit class alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from gridwatt.collector.config import RetentionPolicyConfig
from gridwatt.collector.group_commit import GroupCommit
from gridwatt.collector.store import StoreUnavailable, WriteResult
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc
from tests.collector.helpers import (
    influx_post,
    metric,
    running_collector,
    sim_samples,
    store_for,
    with_influx_settings,
)
from tests.conftest import collector_toml, first_row, influx_query
from tests.influx_front import InfluxFront

NOW_NS = time.time_ns()
T0 = 1_650_000_000 * 10**9


def caller_lines(caller: int, n: int, measurement: str = "m") -> list[str]:
    """n distinct points of one caller: series c=<caller>,i=<k>, field v = caller * 100 + k."""
    return [f"{measurement},c={caller},i={k} v={float(caller * 100 + k)} {NOW_NS - 10**12 + k * 10**9}"
            for k in range(n)]


def count_sum(url: str, database: str, what: str = "m") -> tuple[int, float]:
    (res,) = influx_query(url, database, f"SELECT count(v), sum(v) FROM {what}")
    row = first_row(res)
    return row.get("count", 0), row.get("sum", 0.0)


async def until(check: Any, what: str) -> None:
    """Wait (polling the event loop) until ``check()`` holds; fails after 60 s."""
    deadline = time.monotonic() + 60
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.005)


# -- against a real InfluxDB ---------------------------------------------------------------------


@pytest.mark.integration
async def test_forty_concurrent_callers_share_one_request_and_every_point_is_stored(
    influxdb: LocalInfluxDB, database: str
) -> None:
    async with InfluxFront(influxdb.url) as front, store_for(front.url, database) as store:
        results = await asyncio.gather(*(store.write_lines(caller_lines(c, 10)) for c in range(40)))
        assert [(r.lines, r.rejected, r.retries) for r in results] == [(10, {}, 0)] * 40
        assert len(front.writes) == 1 and front.writes[0].status == 204
        assert front.writes[0].body.count("\n") == 399  # 400 lines in one body
        assert metric(store, "influxdb_group_writes_total") == 1
        assert metric(store, "influxdb_group_callers_total") == 40
    # sum over callers c and points k of c * 100 + k
    assert count_sum(influxdb.url, database) == (400, float(sum(c * 100 * 10 + 45 for c in range(40))))


@pytest.mark.integration
async def test_groups_hold_whole_callers_up_to_write_batch_lines(
    influxdb: LocalInfluxDB, database: str
) -> None:
    async with InfluxFront(influxdb.url) as front, store_for(
        front.url, database, write_batch_lines=25
    ) as store:
        results = await asyncio.gather(*(store.write_lines(caller_lines(c, 10)) for c in range(30)))
        # two callers (20 lines) a request: a third would make 30 > 25
        assert [r.rejected for r in results] == [{}] * 30
        assert len(front.writes) == 15
        assert sorted({w.body.count("\n") + 1 for w in front.writes}) == [20]
        assert metric(store, "influxdb_group_callers_total") == 30
        # a caller larger than a group goes alone, split into requests of 25 by the store as before
        front.writes.clear()
        assert (await store.write_lines(caller_lines(99, 60))).rejected == {}
        assert [w.body.count("\n") + 1 for w in front.writes] == [25, 25, 10]
    assert count_sum(influxdb.url, database)[0] == 300 + 60


@pytest.mark.integration
async def test_a_bad_line_is_rejected_at_its_callers_index_and_costs_the_others_nothing(
    influxdb: LocalInfluxDB, database: str
) -> None:
    async with InfluxFront(influxdb.url) as front, store_for(front.url, database) as store:
        await store.write_lines(caller_lines(0, 1))  # v is a float field from now on
        front.writes.clear()
        callers = [caller_lines(c, 6) for c in (1, 2, 3)]
        callers[1][4] = f"m,c=2,i=4 v=7i {NOW_NS - 10**12 + 4 * 10**9}"  # integer: field type conflict
        a, b, c = await asyncio.gather(*(store.write_lines(lines) for lines in callers))
        assert (a.rejected, a.retries, c.rejected, c.retries) == ({}, 0, {}, 0)
        assert list(b.rejected) == [4] and b.rejected[4][0] == 400
        assert "field type conflict" in b.rejected[4][1]
        # 18 lines, the bad one at 10: halved [0,18) [9,18) [9,13) [9,11), each holding line 10
        assert b.retries == 4 and b.lines == 6
        assert [w.status for w in front.writes] == [400, 204, 400, 400, 400, 204, 400, 204, 204]
        assert metric(store, "influxdb_points_rejected_total", status="400") == 1
    assert count_sum(influxdb.url, database) == (
        18, 0.0 + sum(c * 600 + 15 for c in (1, 2, 3)) - 204)


@pytest.mark.integration
async def test_retention_policy_grouping_holds_and_indexes_stay_the_callers(
    influxdb: LocalInfluxDB, database: str
) -> None:
    influx_post(influxdb.url, f'CREATE DATABASE "{database}"')
    influx_post(influxdb.url, f'CREATE RETENTION POLICY "short" ON "{database}" DURATION 2h REPLICATION 1')
    rps = [RetentionPolicyConfig(name="short", duration="2h", measurements=["job"])]
    async with InfluxFront(influxdb.url) as front, store_for(
        front.url, database, retention_policies=rps
    ) as store:
        await store.write_lines(caller_lines(0, 1, "gpu"))
        front.writes.clear()
        one = caller_lines(1, 2, "gpu") + caller_lines(1, 2, "job")
        two = caller_lines(2, 2, "job") + caller_lines(2, 2, "gpu")
        two[3] = f"gpu,c=2,i=1 v=1i {NOW_NS - 10**12 + 10**9}"  # field type conflict, in the default policy
        r1, r2 = await asyncio.gather(store.write_lines(one), store.write_lines(two))
        assert r1.rejected == {} and list(r2.rejected) == [3]
        assert (r1.retries, r2.retries) == (0, 2)  # the two halvings that found two's line 3
        # one request per policy for the group, then the default policy's 4 lines halved to find the bad one
        seen = [(w.body.split(",", 1)[0], w.body.count("\n") + 1, w.status) for w in front.writes]
        assert seen == [("gpu", 4, 400), ("gpu", 2, 204), ("gpu", 2, 400), ("gpu", 1, 204), ("gpu", 1, 400),
                        ("job", 4, 204)]
    assert count_sum(influxdb.url, database, '"short"."job"') == (4, 100.0 + 101 + 200 + 201)
    assert count_sum(influxdb.url, database, "gpu") == (4, 0.0 + 100 + 101 + 200)  # c=2,i=1 refused
    assert count_sum(influxdb.url, database, "job") == (0, 0.0)  # nothing in the default policy


@pytest.mark.integration
async def test_influxdb_down_every_caller_gets_store_unavailable(tmp_path: Path, database: str) -> None:
    with LocalInfluxDB(tmp_path / "influx-down") as db:
        cfg = {"write_attempts": 2, "retry_base_s": 0.01, "health_probe_interval_s": 60,
               "group_commit_max_in_flight": 1}
        async with store_for(db.url, database, **cfg) as store:
            db.stop()
            outcomes = await asyncio.gather(*(store.write_lines(caller_lines(c, 3)) for c in range(10)),
                                            return_exceptions=True)
            assert all(isinstance(o, StoreUnavailable) and o.reason == "connection" for o in outcomes)
            assert len({id(o) for o in outcomes}) == 10  # each caller its own exception
            # one group, two attempts; nothing else asked
            assert metric(store, "influxdb_write_duration_seconds_count") == 2
            assert metric(store, "influxdb_group_callers_total") == 10 and not store.serving
            with pytest.raises(StoreUnavailable) as err:  # unhealthy: fails fast, queues nothing
                await store.write_lines(caller_lines(10, 3))
            assert err.value.reason == "unhealthy" and metric(store, "influxdb_group_writes_total") == 1


@pytest.mark.integration
async def test_a_cancelled_caller_leaves_the_others_whole(tmp_path: Path, database: str) -> None:
    with LocalInfluxDB(tmp_path / "influx-paused") as db:
        async with store_for(db.url, database, group_commit_max_in_flight=1, timeout_s=120) as store:
            group = store.group
            assert group is not None
            db.pause()
            try:
                a = asyncio.create_task(store.write_lines(caller_lines(1, 4)))
                b = asyncio.create_task(store.write_lines(caller_lines(2, 4)))
                await until(lambda: group.in_flight == 1 and group.queued == 0, "A and B in flight")
                c, d, e = (asyncio.create_task(store.write_lines(caller_lines(k, 4))) for k in (3, 4, 5))
                await until(lambda: group.queued == 3, "C, D and E queued")
                b.cancel()  # its group is in flight: written all the same, B just gets no answer
                d.cancel()  # still queued: never written
            finally:
                db.resume()
            done = await asyncio.gather(a, b, c, d, e, return_exceptions=True)
            assert [type(x).__name__ for x in done] == [
                "WriteResult", "CancelledError", "WriteResult", "CancelledError", "WriteResult"]
            assert [x.rejected for x in done if isinstance(x, WriteResult)] == [{}, {}, {}]
            assert metric(store, "influxdb_write_duration_seconds_count") == 2  # A+B, then C+E
            assert metric(store, "influxdb_group_callers_total") == 4
        assert count_sum(db.url, database) == (16, float(sum(k * 400 + 6 for k in (1, 2, 3, 5))))


# -- through a real collector ----------------------------------------------------------------------


def _toml(url: str, database: str, nodes: int) -> str:
    names = ", ".join(f'"n{k}"' for k in range(nodes))
    racks = f'[[racks]]\nname = "r1"\nzone = "Z"\npue = 1.2\nnodes = [{names}]\n'
    toml = collector_toml(url, database, racks=racks, extra_server="check_intervals = false\n")
    toml += "[accounting]\nrack_windows = false\nestimate_revisit_s = 0\n"
    return with_influx_settings(toml, group_commit_max_in_flight=1, health_check_interval_s=0, timeout_s=120,
                                write_attempts=2, retry_base_s=0.01, health_probe_interval_s=60)


@pytest.mark.e2e
async def test_agents_batches_share_requests_and_are_acknowledged_once_stored(
    tmp_path: Path, database: str
) -> None:
    nodes = 12
    sent = {f"n{k}": sim_samples(f"n{k}", 2, T0, 600, 100.0 + k, 60.0) for k in range(nodes)}
    with LocalInfluxDB(tmp_path / "influx") as db:
        toml = _toml(db.url, database, nodes)
        async with running_collector(tmp_path, toml) as c, grpc.aio.insecure_channel(
            f"127.0.0.1:{c.grpc_port}"
        ) as ch:
            stub = pb_grpc.IngestStub(ch)
            group = c.store.group
            assert group is not None
            db.pause()  # the first group hangs in flight; every other batch queues behind it
            try:
                calls = [asyncio.ensure_future(stub.Write(pb.Batch(batch_id=1, node=node, gpu_samples=s)))
                         for node, s in sent.items()]
                await until(lambda: group.queued + metric(c.store, "influxdb_group_callers_total") == nodes,
                            "every batch handed to the group commit")
                assert all(not call.done() for call in calls)  # nothing acknowledged before it is stored
            finally:
                db.resume()
            acks = await asyncio.gather(*calls)
            assert [(a.code, a.stored_samples) for a in acks] == [(0, 20)] * nodes
            assert metric(c.store, "influxdb_write_duration_seconds_count") == 2  # the first, then the rest
            assert metric(c.store, "influxdb_group_writes_total") == 2
            assert (c.ingestor.stats.samples_stored, c.ingestor.stats.batches_stored) == (nodes * 20, nodes)
        (res,) = influx_query(db.url, database, "SELECT count(energy_j), sum(energy_j) FROM gpu")
        row = first_row(res)
        assert row["count"] == nodes * 20
        energy_j = sum(s.energy_j for samples in sent.values() for s in samples)
        assert row["sum"] == pytest.approx(energy_j, rel=1e-12)


@pytest.mark.e2e
async def test_store_down_every_batch_of_a_group_is_unavailable_and_nothing_acknowledged(
    tmp_path: Path, database: str
) -> None:
    nodes = 6
    with LocalInfluxDB(tmp_path / "influx") as db:
        toml = _toml(db.url, database, nodes)
        async with running_collector(tmp_path, toml) as c, grpc.aio.insecure_channel(
            f"127.0.0.1:{c.grpc_port}"
        ) as ch:
            stub = pb_grpc.IngestStub(ch)
            db.stop()
            calls = [stub.Write(pb.Batch(batch_id=1, node=f"n{k}",
                                         gpu_samples=sim_samples(f"n{k}", 2, T0, 600, 100.0, 60.0)))
                     for k in range(nodes)]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            assert [o.code() for o in outcomes if isinstance(o, grpc.aio.AioRpcError)] == [
                grpc.StatusCode.UNAVAILABLE] * nodes
            st = c.ingestor.stats
            assert (st.samples_stored, st.batches_stored, st.samples_deferred, st.batches_deferred) == (
                0, 0, nodes * 20, nodes)
            # the batches that reached InfluxDB shared one group: two attempts; the rest failed fast
            assert metric(c.store, "influxdb_write_duration_seconds_count") == 2


# -- the coalescing rules, on GroupCommit alone -------------------------------------------------------


def _share(result: list[str], spans: Sequence[tuple[int, int]]) -> list[list[str]]:
    return [result[first:first + n] for first, n in spans]


async def test_slots_bound_the_groups_in_flight_and_the_next_group_gathers_meanwhile() -> None:
    gates: list[asyncio.Event] = []
    groups: list[list[str]] = []
    running = peak = 0

    async def write(lines: list[str]) -> list[str]:
        nonlocal running, peak
        groups.append(lines)
        running += 1
        peak = max(peak, running)
        gate = asyncio.Event()
        gates.append(gate)
        await gate.wait()
        running -= 1
        return [line.upper() for line in lines]

    gc = GroupCommit(write, _share, lambda e: e, lambda: RuntimeError("closed"), max_lines=lambda: 5,
                     max_bytes=1000, max_in_flight=2)
    first = [asyncio.create_task(gc.submit([f"a{k}"])) for k in range(2)]  # one group of 2
    await until(lambda: gc.in_flight == 1, "first group started")
    more = [asyncio.create_task(gc.submit([f"b{k}", f"b{k}."])) for k in range(4)]  # 2 lines each
    await until(lambda: gc.in_flight == 2, "second group started")
    # whole callers up to 5 lines: a third would make 6
    assert groups == [["a0", "a1"], ["b0", "b0.", "b1", "b1."]] and gc.queued == 2
    # half a group or more (3 of 5 lines) is written at once, though both slots are busy
    big = asyncio.create_task(gc.submit(["c0", "c1", "c2"]))
    await until(lambda: len(groups) == 3, "the large caller written")
    assert groups[2] == ["c0", "c1", "c2"] and gc.queued == 2
    gates[0].set()  # a slot frees: the next group starts
    await until(lambda: len(groups) == 4, "fourth group")
    while not all(t.done() for t in [*first, *more, big]):
        for gate in gates:
            gate.set()
        await asyncio.sleep(0)
    answers = await asyncio.gather(*first, *more, big)
    assert answers == [["A0"], ["A1"], ["B0", "B0."], ["B1", "B1."], ["B2", "B2."], ["B3", "B3."],
                       ["C0", "C1", "C2"]]
    assert groups[3] == ["b2", "b2.", "b3", "b3."]
    assert peak == 3  # two slots, and the large caller beside them


async def test_bytes_bound_the_groups_and_close_fails_whoever_waits() -> None:
    gate = asyncio.Event()
    groups: list[list[str]] = []

    async def write(lines: list[str]) -> list[str]:
        groups.append(lines)
        await gate.wait()
        return lines

    gc = GroupCommit(write, _share, lambda e: e, lambda: RuntimeError("closed"), max_lines=lambda: 100,
                     max_bytes=10, max_in_flight=1)
    tasks = [asyncio.create_task(gc.submit(["xxxx"])) for _ in range(3)]  # 5 bytes each with its newline
    await until(lambda: gc.in_flight == 1, "first group")
    assert groups == [["xxxx", "xxxx"]] and gc.queued == 1
    await gc.close()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert [str(o) for o in outcomes] == ["closed"] * 3
    with pytest.raises(RuntimeError, match="closed"):
        await gc.submit(["late"])


def test_write_result_share_gives_each_caller_its_own_indexes_and_retries() -> None:
    whole = WriteResult(lines=10, rejected={4: (400, "bad"), 9: (413, "too large")})
    whole.note("retry", range(0, 10))  # a 503 retried: every caller's lines were in it
    whole.note("split_bad", range(0, 10))  # 400 halved to find line 4
    whole.note("split_bad", range(3, 5))  # held line 4 (caller 1's)
    whole.note("split_413", range(8, 10))  # too large: caller 2's lines only
    whole.note("split_bad", [6, 7])  # a 400 split where nothing was found: costs no one
    a, b, c = whole.share([(0, 3), (3, 5), (8, 2)])
    assert (a.lines, a.rejected, a.retries) == (3, {}, 1)
    assert (b.lines, b.rejected, b.retries) == (5, {1: (400, "bad")}, 3)
    # c: the retry, its 413 split, and the first 400 split (which held its refused line 9)
    assert (c.lines, c.rejected, c.retries) == (2, {1: (413, "too large")}, 3)
