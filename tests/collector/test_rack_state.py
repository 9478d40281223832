"""Held rack state (collector/rack_state.py) against a real InfluxDB, through real gRPC streams.

Rack windows summed from held node points must be exactly (bit for bit) what a read-back recompute
writes, and what the test adds up itself from the stored node points in series-key order, whatever the
order batches come in (resends, late samples, splits, reconnects, unary writes) and with a rack's nodes
on two replicas. And they must cost fewer reads: counted exactly.
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from gridwatt.collector import queries
from gridwatt.collector.config import CollectorConfig
from gridwatt.collector.rack_state import (
    NODE_FIELDS,
    HeldRacks,
    NodePoint,
    RackWindow,
    points_from_result,
    rack_sums,
)
from gridwatt.collector.rollup import RackRollup
from gridwatt.collector.server import RunningCollector
from gridwatt.collector.store import series_rows
from gridwatt.collector.wiring import build_topology
from gridwatt.configfile import load_config
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.v1 import telemetry_pb2 as pb
from tests.collector.helpers import running_collector
from tests.collector.test_node_state import (
    Stream,
    other_instance_marks,
    random_samples,
    sample,
    snapshot,
    unary,
)
from tests.conftest import collector_toml, influx_query

NS = 1_000_000_000
J_PER_KWH = 3.6e6
#: Sample time: three hours ago, on a whole minute (the windows are 60 s).
T0 = (time.time_ns() - 3 * 3600 * NS) // (60 * NS) * (60 * NS)
NODES = ("n1", "n2", "n3", "n4")
RACK = '[[racks]]\nname = "r1"\nzone = "Z"\npue = 1.3\nnodes = ["n1", "n2", "n3", "n4"]\n'


def toml(influxdb: LocalInfluxDB, database: str, settle_s: float = 0.0, racks: str = RACK) -> str:
    return (collector_toml(influxdb.url, database, racks=racks)
            + f"\n[accounting]\nreplica_settle_s = {settle_s}\n")


def stored_node_points(influxdb: LocalInfluxDB, database: str) -> dict[int, dict[str, dict[str, Any]]]:
    """Every stored node point of r1: window -> node -> fields."""
    (res,) = influx_query(influxdb.url, database, "SELECT * FROM node WHERE rack = 'r1' GROUP BY node")
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for series in res.get("series", []):
        for values in series["values"]:
            row = dict(zip(series["columns"], values, strict=True))
            out.setdefault(row["time"], {})[series["tags"]["node"]] = row
    return out


def stored_rack_points(influxdb: LocalInfluxDB, database: str) -> dict[int, dict[str, Any]]:
    (res,) = influx_query(influxdb.url, database, "SELECT * FROM rack WHERE rack = 'r1'")
    series = res.get("series", [])
    if not series:
        return {}
    return {v[0]: dict(zip(series[0]["columns"], v, strict=True)) for v in series[0]["values"]}


def assert_racks_add_up_in_node_order(influxdb: LocalInfluxDB, database: str) -> int:
    """Each rack point is the stored node points added one by one in node order (computed here, with
    no collector code), bit for bit; returns the windows checked."""
    nodes = stored_node_points(influxdb, database)
    racks = stored_rack_points(influxdb, database)
    assert sorted(racks) == sorted(nodes)
    for t, by_node in nodes.items():
        e = c = d = 0.0
        gpus = 0
        for node in sorted(by_node):
            e += by_node[node]["it_energy_kwh"]
            c += by_node[node]["co2e_g"]
            d += by_node[node]["gpu_seconds"]
            gpus += by_node[node]["gpu_count"]
        rack = racks[t]
        assert rack["it_energy_kwh"] == e * J_PER_KWH / J_PER_KWH
        assert rack["co2e_g"] == c
        assert rack["gpu_seconds"] == d
        assert (rack["gpu_count"], rack["nodes"]) == (gpus, len(by_node))
    return len(nodes)


async def not_held(c: RunningCollector) -> None:
    """Wait until the collector has seen a closed stream of r1 (it then no longer holds r1)."""
    deadline = time.monotonic() + 30
    while c.ingestor.rollup.racks.eligible("r1"):
        assert time.monotonic() < deadline, "the stream never closed"
        await asyncio.sleep(0.02)


async def read_back_everything(c: RunningCollector, nodes: list[str], windows: set[int]) -> None:
    """Recompute every window from the store: node windows read back, the rack's windows read (the
    rack is not held once its streams are closed)."""
    await not_held(c)
    for node in nodes:
        await c.ingestor.rollup.recompute(node, "r1", "Z", windows)


async def marked_elsewhere(c: RunningCollector, nodes: list[str], windows: list[int]) -> None:
    """Writer marks of these nodes' windows by another collector instance (so that the final read-backs
    of the collector ``c`` read the job sums: collector/writer_marks.py)."""
    result = await c.store.write_lines(other_instance_marks(c.ingestor.rollup, nodes, windows))
    assert not result.rejected


async def settled(*collectors: RunningCollector) -> None:
    """Wait until no read-back or settle recompute is pending on any of the collectors."""
    deadline = time.monotonic() + 60
    while any(c.ingestor.rollup.pending_read_backs() for c in collectors):
        assert time.monotonic() < deadline, "read-backs never finished"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("settle_s", [0.0, 0.4])
async def test_held_rack_windows_equal_the_read_back_under_resends_late_and_reconnects(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, settle_s: float
) -> None:
    rnd = random.Random(11 + int(settle_s * 10))
    async with running_collector(tmp_path, toml(influxdb, database, settle_s)) as c:
        port = c.grpc_port
        samples = {n: random_samples(rnd, gpus=3, steps=48) for n in NODES}  # 4 minutes: 4 windows
        # each node's GPU 2 of steps 10..19 comes late, after its later samples
        late = {n: [s for s in ss if s.gpu_index == 2 and T0 + 50 * NS <= s.start_ns < T0 + 100 * NS]
                for n, ss in samples.items()}
        todo = {n: [s for s in ss if s not in late[n]] for n, ss in samples.items()}
        sent: dict[str, list[pb.GpuSample]] = {n: [] for n in NODES}
        streams = {n: Stream(port) for n in NODES}
        ids = iter(range(1, 100_000))
        unsent = set(NODES)  # nodes whose current stream has sent nothing yet (not open on the server)

        async def step(node: str) -> None:
            chunk = todo[node][:rnd.randint(1, 9)]
            del todo[node][:len(chunk)]
            roll = rnd.random()
            batch = pb.Batch(batch_id=next(ids), node=node, gpu_samples=chunk)
            if roll < 0.08:
                await unary(port, batch)
            else:
                ack = await streams[node].send(batch)
                assert ack.code == 0, ack.message
                unsent.discard(node)
            sent[node] += chunk
            if roll > 0.85 and len(sent[node]) > 4:  # a resend of stored samples, split differently
                lo = rnd.randrange(0, len(sent[node]) - 1)
                again = sent[node][lo:lo + rnd.randint(1, 12)]
                ack = await streams[node].send(pb.Batch(batch_id=next(ids), node=node, gpu_samples=again))
                assert ack.code == 0, ack.message
            if 0.8 < roll <= 0.85:  # the agent reconnects
                await streams[node].close()
                streams[node] = Stream(port)
                unsent.add(node)
            if late[node] and sent[node][-1].start_ns >= T0 + 130 * NS:
                batch = pb.Batch(batch_id=next(ids), node=node, gpu_samples=late[node])
                ack = await streams[node].send(batch)
                assert ack.code == 0, ack.message
                late[node] = []

        rounds = 0
        while any(todo.values()):
            ready = [n for n in NODES if todo[n]]
            await asyncio.gather(*(step(n) for n in rnd.sample(ready, rnd.randint(1, len(ready)))))
            rounds += 1
            if rounds % 6 == 0 and not unsent:  # let the rack be held again (settle_s after a reconnect)
                deadline = time.monotonic() + 30
                while not c.ingestor.rollup.racks.eligible("r1"):
                    assert time.monotonic() < deadline, "the rack was never held"
                    await asyncio.sleep(0.05)
        rollup = c.ingestor.rollup
        assert rollup.rack_held_windows > 0  # some rack windows were summed from held state
        await settled(c)
        for s in streams.values():
            await s.close()
        before = snapshot(influxdb, database)
        assert assert_racks_add_up_in_node_order(influxdb, database) == 4
        await read_back_everything(c, list(NODES), {T0 + k * 60 * NS for k in range(4)})
        assert snapshot(influxdb, database) == before  # every field of every window, bit for bit
        assert rollup.rack_final_mismatches == 0
        (gpu, rack) = influx_query(influxdb.url, database,
                                   "SELECT sum(energy_j) FROM gpu; SELECT sum(it_energy_kwh) FROM rack")
        total = sum(s.energy_j for ss in samples.values() for s in ss)
        assert gpu["series"][0]["values"][0][1] == pytest.approx(total, rel=1e-12)
        assert rack["series"][0]["values"][0][1] * J_PER_KWH == pytest.approx(total, rel=1e-12)


async def test_rack_reads_of_a_fully_streamed_rack_are_counted_exactly(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    async with running_collector(tmp_path, toml(influxdb, database)) as c:
        rollup = c.ingestor.rollup
        streams = {n: Stream(c.grpc_port) for n in NODES}
        power = {"n1": 300.0, "n2": 310.0, "n3": 320.0, "n4": 330.0}

        async def send(node: str, k: int) -> None:  # second k of the node: 8 GPUs, one 1-s sample each
            batch = [sample(g, T0 + k * NS, 1, power[node], [("job-0", 1.0, {})]) for g in range(8)]
            ack = await streams[node].send(pb.Batch(batch_id=k + 1, node=node, gpu_samples=batch))
            assert ack.code == 0, ack.message

        # until the last node's stream opens the rack is read at each recompute: 3 reads; the 4th
        # node's first batch holds window T0 (one read)
        for node in NODES:
            await send(node, 0)
        assert rollup.rack_queries == 4
        # 70 seconds of all four nodes, one batch each per second: window T0+60 is read once
        for k in range(1, 70):
            await asyncio.gather(*(send(n, k) for n in NODES))
        assert rollup.rack_queries == 5
        assert (rollup.node_queries, rollup.settle_runs) == (0, 0)
        # n2's agent reconnects: until its new stream sends, the rack is not held (a read per
        # recompute); its first batch on the new stream holds the window again with one read
        await streams["n2"].close()
        await not_held(c)
        await send("n1", 70)
        await send("n3", 70)
        assert rollup.rack_queries == 7
        streams["n2"] = Stream(c.grpc_port)
        await send("n2", 70)
        await send("n4", 70)
        for node in NODES:
            await send(node, 71)
        assert rollup.rack_queries == 8
        for s in streams.values():
            await s.close()
        assert assert_racks_add_up_in_node_order(influxdb, database) == 2
        (rack,) = influx_query(influxdb.url, database, "SELECT gpu_count, nodes, gpu_seconds FROM rack")
        assert rack["series"][0]["values"] == [[T0, 32, 4, 32 * 60.0], [T0 + 60 * NS, 32, 4, 32 * 12.0]]


async def test_rack_sum_follows_node_order_not_arrival_order(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    """Node kWh values whose float sum depends on the order; the nodes arrive in reverse order."""
    racks = '[[racks]]\nname = "r1"\nzone = "Z"\npue = 1.3\nnodes = ["n1", "n2", "n3"]\n'
    power = {"n1": 101.0, "n2": 350.0, "n3": 480.0}
    a, b, c3 = (power[n] * 60 / J_PER_KWH for n in ("n1", "n2", "n3"))
    in_order = ((0.0 + a) + b) + c3
    reverse = ((0.0 + c3) + b) + a
    assert in_order * J_PER_KWH / J_PER_KWH != reverse * J_PER_KWH / J_PER_KWH  # the test can tell
    async with running_collector(tmp_path, toml(influxdb, database, racks=racks)) as c:
        streams = {n: Stream(c.grpc_port) for n in power}
        for node in ("n1", "n2", "n3"):  # open the streams (a window before T0)
            ack = await streams[node].send(pb.Batch(batch_id=1, node=node, gpu_samples=[
                sample(0, T0 - 60 * NS, 60, 100.0, [("job-0", 1.0, {})])]))
            assert ack.code == 0, ack.message
        assert c.ingestor.rollup.racks.eligible("r1")
        for node in ("n3", "n2", "n1"):
            ack = await streams[node].send(pb.Batch(batch_id=2, node=node, gpu_samples=[
                sample(0, T0, 60, power[node], [("job-0", 1.0, {})])]))
            assert ack.code == 0, ack.message
        assert c.ingestor.rollup.rack_held_windows >= 2
        (rack,) = influx_query(influxdb.url, database, f"SELECT it_energy_kwh FROM rack WHERE time = {T0}")
        assert rack["series"][0]["values"][0][1] == in_order * J_PER_KWH / J_PER_KWH
        for s in streams.values():
            await s.close()
        before = snapshot(influxdb, database)
        await read_back_everything(c, ["n1", "n2", "n3"], {T0 - 60 * NS, T0})
        assert snapshot(influxdb, database) == before


async def test_a_node_writing_through_another_replica_is_caught_by_the_final_read_back(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    """All of r1's nodes stream to A, so A holds r1; n4's agent then writes through B while its old
    stream to A stays open (A cannot tell). A's next rack window from held state misses n4's new
    point; A's final read-back rewrites it, and both replicas leave the exact sums."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cfg = toml(influxdb, database, settle_s=0.3)
    async with running_collector(tmp_path / "a", cfg) as a, running_collector(tmp_path / "b", cfg) as b:
        job = [("job-0", 1.0, {})]
        streams = {n: Stream(a.grpc_port) for n in NODES}
        for k, node in enumerate(NODES):
            ack = await streams[node].send(pb.Batch(batch_id=1, node=node, gpu_samples=[
                sample(g, T0, 10, 200.0 + 10 * k, job) for g in range(2)]))
            assert ack.code == 0, ack.message
        deadline = time.monotonic() + 30
        while not a.ingestor.rollup.racks.eligible("r1"):  # settle_s after the last stream opened
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        for k, node in enumerate(NODES):
            ack = await streams[node].send(pb.Batch(batch_id=2, node=node, gpu_samples=[
                sample(g, T0 + 10 * NS, 10, 200.0 + 10 * k, job) for g in range(2)]))
            assert ack.code == 0, ack.message
        held_before = a.ingestor.rollup.rack_held_windows
        assert held_before > 0
        await settled(a)  # A's read-backs of these windows are done: A will not read n4's window again
        elsewhere = Stream(b.grpc_port)
        ack = await elsewhere.send(pb.Batch(batch_id=3, node="n4", gpu_samples=[
            sample(g, T0 + 20 * NS, 10, 500.0, job) for g in range(2)]))
        assert ack.code == 0, ack.message
        ack = await streams["n1"].send(pb.Batch(batch_id=3, node="n1", gpu_samples=[
            sample(g, T0 + 20 * NS, 10, 200.0, job) for g in range(2)]))
        assert ack.code == 0, ack.message
        assert a.ingestor.rollup.rack_held_windows > held_before  # summed without n4's new point
        await settled(a, b)
        assert a.ingestor.rollup.rack_final_mismatches == 1
        await elsewhere.close()
        for s in streams.values():
            await s.close()
        expected_j = 2 * 10 * (200 + 210 + 220 + 230) * 2 + 2 * 10 * (200 + 500)
        (rack,) = influx_query(influxdb.url, database, "SELECT it_energy_kwh, gpu_count, nodes FROM rack")
        ((t, kwh, gpus, nodes),) = rack["series"][0]["values"]
        assert (t, gpus, nodes) == (T0, 8, 4)
        assert kwh * J_PER_KWH == pytest.approx(expected_j, rel=1e-12)
        assert_racks_add_up_in_node_order(influxdb, database)
        before = snapshot(influxdb, database)
        await read_back_everything(a, list(NODES), {T0})
        assert snapshot(influxdb, database) == before


def _pt(e: float) -> NodePoint:
    return NodePoint((e, e, 1.0, 0.0, 10.0, 5.0, 0.0, 0.0), 8)


def test_held_racks_follow_writes_and_drop_what_they_cannot_know() -> None:
    racks = HeldRacks(settle_s=0.0, max_windows=2)
    racks.configure({"r1": ["a", "b"], "r2": []})
    assert not racks.eligible("r1") and not racks.eligible("r2") and not racks.eligible("other")
    racks.stream_opened("a")
    assert not racks.eligible("r1")
    racks.stream_opened("b")
    assert racks.eligible("r1")
    # a read in flight: a write landing meanwhile goes over its answer; one failing spoils its window
    read = racks.begin_read("r1", {T0, T0 + 60 * NS})
    racks.wrote("r1", ("a", "Z"), {T0: _pt(2.0)})
    racks.wrote("r1", ("b", "Z"), {}, failed=[T0 + 60 * NS])
    got, kept, before = racks.end_read("r1", read, {T0: {("a", "Z"): _pt(1.0), ("b", "Z"): _pt(3.0)}})
    assert got[T0] == {("a", "Z"): _pt(2.0), ("b", "Z"): _pt(3.0)} and kept == {T0} and before == {}
    assert racks.window("r1", T0 + 60 * NS) is None
    # held windows follow writes; a failed write drops its window
    racks.wrote("r1", ("b", "Z"), {T0: _pt(4.0)})
    window = racks.window("r1", T0)
    assert window is not None and window[("b", "Z")] == _pt(4.0)
    # a version follows changes: the rack point is rewritten only where the node points changed
    held = racks.held("r1", T0)
    assert held is not None and held.written == -1
    racks.written("r1", T0, held.version)
    racks.wrote("r1", ("b", "Z"), {T0: _pt(4.0)})  # the same point again (a read-back, a resend)
    assert held.written == held.version
    racks.wrote("r1", ("b", "Z"), {T0: _pt(5.0)})
    assert held.written == held.version - 1
    racks.wrote("r1", ("a", "Z"), {}, failed=[T0])
    assert racks.window("r1", T0) is None
    # at most max_windows per rack, the newest
    for k in range(3):
        r = racks.begin_read("r1", {T0 + k * 60 * NS})
        racks.end_read("r1", r, {})
    assert [racks.window("r1", T0 + k * 60 * NS) for k in range(3)] == [None, {}, {}]
    # a stream opening or closing drops the rack, and a read in flight then holds nothing
    r = racks.begin_read("r1", {T0})
    racks.stream_opened("a")  # a second stream of a: it may have written elsewhere
    assert racks.end_read("r1", r, {})[1] == set() and racks.held_windows("r1") == 0
    racks.stream_closed("a")
    assert racks.eligible("r1")
    racks.stream_closed("a")
    assert not racks.eligible("r1")


def test_windows_of_racks_not_held_are_leased_from_when_their_read_was_sent() -> None:
    """A rack that is not held keeps what a read found, with this replica's writes since, for lease_s
    after the read was sent; a window leased before its rack became eligible keeps only its lease; past
    max_leased_windows those whose lease ran out go first, then the oldest."""
    now = [1000.0]
    racks = HeldRacks(settle_s=10.0, lease_s=5.0, max_leased_windows=3)
    racks.clock = lambda: now[0]
    racks.configure({"r1": ["a"]})
    assert racks.summable("unassigned") and not racks.eligible("unassigned")
    read = racks.begin_read("unassigned", {T0})
    now[0] += 1.0  # the answer comes a second after the read was sent: the lease runs from the send
    _, kept, _ = racks.end_read("unassigned", read, {T0: {("x", "Z"): _pt(1.0)}})
    assert kept == {T0}
    racks.wrote("unassigned", ("y", "Z"), {T0: _pt(2.0)})
    held = racks.held("unassigned", T0)
    assert held is not None and held.points == {("x", "Z"): _pt(1.0), ("y", "Z"): _pt(2.0)}
    assert racks.lease_ends("unassigned", held) == 1005.0
    now[0] = 1004.999
    assert racks.window("unassigned", T0) is not None
    now[0] = 1005.0
    assert racks.window("unassigned", T0) is None
    assert racks.held("unassigned", T0, at=1004.0) is held  # (as it was a second earlier)
    # past max_leased_windows: those whose lease ran out first (T0), then the oldest (T0 + 1 min)
    for k in (1, 2, 3):
        r = racks.begin_read("unassigned", {T0 + k * 60 * NS})
        racks.end_read("unassigned", r, {})
    assert [racks.window("unassigned", T0 + k * 60 * NS) for k in range(4)] == [None, {}, {}, {}]
    r = racks.begin_read("unassigned", {T0 + 4 * 60 * NS})
    racks.end_read("unassigned", r, {})
    assert [racks.window("unassigned", T0 + k * 60 * NS) is not None for k in range(5)] == [
        False, False, True, True, True]
    racks.max_leased_points = 5  # and at most so many node points: the oldest windows go
    for k, n in ((5, 2), (6, 4)):
        r = racks.begin_read("unassigned", {T0 + k * 60 * NS})
        racks.end_read("unassigned", r, {T0 + k * 60 * NS: {(f"n{j}", "Z"): _pt(1.0) for j in range(n)}})
    assert [racks.window("unassigned", T0 + k * 60 * NS) is not None for k in range(7)] == [
        False, False, False, False, False, False, True]
    racks.max_leased_points = 50_000
    # r1: read while its only node's stream was open for less than settle_s (another replica may still
    # have been writing): leased, and still only leased once r1 is eligible; a read after that holds
    racks.stream_opened("a")
    early = racks.begin_read("r1", {T0})
    racks.end_read("r1", early, {T0: {}})
    now[0] += 10.0
    assert racks.eligible("r1")
    held = racks.held("r1", T0, at=now[0] - 10.0)
    assert held is not None and racks.lease_ends("r1", held) == now[0] - 10.0 + 5.0
    assert racks.window("r1", T0) is None
    late = racks.begin_read("r1", {T0})
    racks.end_read("r1", late, {T0: {}})
    now[0] += 3600.0
    held = racks.held("r1", T0)
    assert held is not None and racks.lease_ends("r1", held) is None
    assert not HeldRacks(settle_s=0.0).summable("unassigned")  # one replica: no leases


def test_held_racks_wait_settle_s_after_the_last_stream_opened() -> None:
    racks = HeldRacks(settle_s=60.0)
    racks.configure({"r1": ["a"]})
    racks.stream_opened("a")
    assert not racks.eligible("r1")


def test_rack_sums_add_in_node_order_and_count_nodes() -> None:
    window: RackWindow = {("n3", "Z"): _pt(0.3), ("n2", "Z"): _pt(0.2), ("n1", "Z"): _pt(0.1)}
    w = rack_sums(window)
    assert w is not None
    assert w["e"] == ((0.1 + 0.2) + 0.3) * J_PER_KWH != ((0.3 + 0.2) + 0.1) * J_PER_KWH
    assert (w["n"], w["nodes"], w["d"]) == (24.0, 3.0, 30.0)
    # a point without gpu_count (absent field) is summed where it has values, not counted as a node
    window[("n0", "Z")] = NodePoint((1.0, None, None, None, None, None, None, None), None)
    w = rack_sums(window)
    assert w is not None and (w["n"], w["nodes"], w["c"]) == (24.0, 3.0, 3.0)
    assert rack_sums({}) is None


def points_from_rows(rows: Iterable[tuple[dict[str, str], dict[str, Any]]]) -> dict[int, RackWindow]:
    """The reference for ``points_from_result``: the same answer read through a dict per row."""
    out: dict[int, RackWindow] = {}
    for tags, row in rows:
        count = row.get("gpu_count")
        point = NodePoint(tuple(None if row.get(name) is None else float(row[name]) for name in NODE_FIELDS),
                          None if count is None else int(count))
        out.setdefault(int(row["time"]), {})[(tags.get("node", ""), tags.get("zone", ""))] = point
    return out


def test_node_points_are_parsed_by_column_as_through_rows(influxdb: LocalInfluxDB, database: str) -> None:
    """``points_from_result`` (by column position) gives what ``points_from_rows`` gives through a dict
    per row, on a real InfluxDB answer: fields absent from some points (None), a field no point has
    (no column at all), two zones of one node, and float values that must come back bit for bit."""
    influx_query(influxdb.url, database, f'CREATE DATABASE "{database}"')
    body = "\n".join([
        f"node,node=n2,rack=r1,zone=Z it_energy_kwh=0.1,facility_energy_kwh=0.13,co2e_g=0.30000000000000004,"
        f"estimated_co2e_g=0,gpu_seconds=480,util_pct_s=1e-300,idle_s=3,idle_energy_kwh=0.02,"
        f"gpu_count=8i {T0}",
        f"node,node=n1,rack=r1,zone=Z it_energy_kwh=0.7,gpu_count=4i {T0}",
        f"node,node=n1,rack=r1,zone=Y co2e_g=2.5 {T0}",
        f"node,node=n1,rack=r1,zone=Z it_energy_kwh=1.25,facility_energy_kwh=1.5,gpu_count=4i {T0 + 60 * NS}",
        f"node,node=n9,rack=r2,zone=Z it_energy_kwh=9.0,gpu_count=1i {T0}",
    ])
    req = urllib.request.Request(f"{influxdb.url}/write?db={database}&precision=ns", data=body.encode(),
                                 method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 204
    (res,) = influx_query(influxdb.url, database,
                          queries.rack_window_points(queries.plain, "r1", T0, T0 + 120 * NS))
    got = points_from_result(res)
    assert got == points_from_rows(series_rows(res))
    none7 = (None,) * 7
    assert got == {
        T0: {("n2", "Z"): NodePoint((0.1, 0.13, 0.30000000000000004, 0.0, 480.0, 1e-300, 3.0, 0.02), 8),
             ("n1", "Z"): NodePoint((0.7, *none7), 4),
             ("n1", "Y"): NodePoint((None, None, 2.5, None, None, None, None, None), None)},
        T0 + 60 * NS: {("n1", "Z"): NodePoint((1.25, 1.5, *(None,) * 6), 4)},
    }
    # a column missing altogether (as where no point has idle_energy_kwh) and an empty answer
    trimmed = {"series": [{**s, "columns": s["columns"][:-2] + s["columns"][-1:],
                           "values": [v[:-2] + v[-1:] for v in s["values"]]} for s in res["series"]]}
    assert points_from_result(trimmed) == points_from_rows(series_rows(trimmed))
    assert points_from_result({}) == {} == points_from_result({"series": None})


async def test_node_read_backs_due_together_are_one_query(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    """The final read-backs of the node windows of a rack's nodes, due at once, are read in one query
    (close() runs every pending one now; another instance marked the windows, so they read the sums,
    after one read of the marks) and leave exactly what a read-back recompute writes."""
    async with running_collector(tmp_path, toml(influxdb, database, settle_s=60.0)) as c:
        rollup = c.ingestor.rollup
        await marked_elsewhere(c, list(NODES), [T0, T0 + 60 * NS])
        streams = {n: Stream(c.grpc_port) for n in NODES}
        for k, node in enumerate(NODES):
            ack = await streams[node].send(pb.Batch(batch_id=1, node=node, gpu_samples=[
                sample(g, T0 + 60 * NS * w, 10, 200.0 + 10 * k, [("job-0", 1.0, {})])
                for w in range(2) for g in range(8)]))
            assert ack.code == 0, ack.message
        assert rollup.node_queries == 0  # node windows from held state, read back later
        await rollup.close()
        assert (rollup.node_queries, rollup.mark_queries) == (1, 1)  # 4 nodes, 2 windows: one query
        assert (rollup.final_mismatches, rollup.pending_read_backs()) == (0, 0)
        for s in streams.values():
            await s.close()
        before = snapshot(influxdb, database)
        assert assert_racks_add_up_in_node_order(influxdb, database) == 2
        await read_back_everything(c, list(NODES), {T0, T0 + 60 * NS})
        assert snapshot(influxdb, database) == before


async def test_node_read_backs_of_a_backfill_read_each_node_over_its_own_windows(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    """Nodes due at different windows together (a backfill: n1, n2 at windows 0-1, n3, n4 at 2-3) are
    read in one query per run of windows, each naming only the nodes due there (a read over the union
    named all four over four windows), and leave exactly what a read-back recompute writes (another
    instance marked the windows, so they read the sums)."""
    async with running_collector(tmp_path, toml(influxdb, database, settle_s=60.0)) as c:
        rollup = c.ingestor.rollup
        await marked_elsewhere(c, list(NODES), [T0 + 60 * NS * w for w in range(4)])
        streams = {n: Stream(c.grpc_port) for n in NODES}
        for k, node in enumerate(NODES):
            first = 0 if k < 2 else 2
            ack = await streams[node].send(pb.Batch(batch_id=1, node=node, gpu_samples=[
                sample(g, T0 + 60 * NS * w, 10, 200.0 + 10 * k, [("job-0", 1.0, {})])
                for w in (first, first + 1) for g in range(8)]))
            assert ack.code == 0, ack.message
        assert rollup.node_queries == 0
        await rollup.close()
        assert rollup.node_queries == 2  # (n1, n2) over windows 0-1, (n3, n4) over 2-3
        assert (rollup.mark_queries, rollup.read_back_sums_skipped) == (1, 0)  # their marks: one request
        assert (rollup.final_mismatches, rollup.pending_read_backs()) == (0, 0)
        for s in streams.values():
            await s.close()
        before = snapshot(influxdb, database)
        assert assert_racks_add_up_in_node_order(influxdb, database) == 4
        await read_back_everything(c, list(NODES), {T0 + 60 * NS * w for w in range(4)})
        assert snapshot(influxdb, database) == before


def test_read_backs_of_just_closed_windows_are_spread_per_rack() -> None:
    """Each rack's read-backs of a window just closed start at a fixed offset of its own (up to
    read_back_spread_s after the window's end plus settle_s); long-closed windows do not wait."""
    rollup = RackRollup(None, 60, settle_s=2.0)  # type: ignore[arg-type]
    assert rollup.read_back_spread_s == 54.0
    now = time.monotonic()
    open_window = time.time_ns() // (60 * NS) * (60 * NS)
    plain = rollup._final_wait_s(open_window, now)
    waits = [rollup._final_wait_s(open_window, now, f"r{k}") for k in range(8)]
    assert all(plain - 0.5 <= w <= plain + 54.5 for w in waits)
    assert max(waits) - min(waits) > 1.0  # spread, not all at once
    assert 1.0 < rollup._final_wait_s(T0, now, "r1") <= 2.0


@pytest.mark.parametrize("auto_register", [False, True])
def test_racks_auto_registered_nodes_may_join_are_never_held(tmp_path: Path, auto_register: bool) -> None:
    """With auto-registration the default rack's members are not known ahead: it is left out (a
    configured rack of the same name too); racks without configured nodes are left out."""
    racks = ('[[racks]]\nname = "r1"\nzone = "Z"\npue = 1.3\nnodes = ["n1", "n2"]\n'
             '[[racks]]\nname = "unassigned"\nzone = "Z"\npue = 1.3\nnodes = ["n3"]\n'
             '[[racks]]\nname = "empty"\nzone = "Z"\npue = 1.3\nnodes = []\n')
    cfg = tmp_path / "collector.toml"
    cfg.write_text(collector_toml("http://127.0.0.1:1", "db", racks=racks)
                   + '\n[accounting]\ndefault_rack = "unassigned"\n')
    config = load_config(cfg, CollectorConfig)
    config.server.auto_register = auto_register
    topology = build_topology(config)
    expected = {"r1": frozenset({"n1", "n2"})}
    if not auto_register:
        expected["unassigned"] = frozenset({"n3"})
    assert topology.rack_members() == expected
    held = HeldRacks(settle_s=0.0)
    held.configure(topology.rack_members())
    for node in ("n1", "n2", "n3"):
        held.stream_opened(node)
    assert held.eligible("r1") and held.eligible("unassigned") != auto_register
    assert not held.eligible("empty")


def test_a_read_overlapping_a_write_in_flight_is_not_compared() -> None:
    """A read may see a node point before its write returns: such a window is held from the read
    (and the write's value goes over it), but not compared with what was held (no false mismatch)."""
    racks = HeldRacks(settle_s=0.0)
    racks.configure({"r1": ["a"]})
    racks.stream_opened("a")
    first = racks.begin_read("r1", {T0, T0 + 60 * NS})
    racks.end_read("r1", first, {T0: {("a", "Z"): _pt(1.0)}, T0 + 60 * NS: {("a", "Z"): _pt(1.0)}})
    racks.begin_write("r1", [T0])  # in flight while the next read runs, which already sees it
    read = racks.begin_read("r1", {T0, T0 + 60 * NS})
    _, kept, before = racks.end_read("r1", read, {T0: {("a", "Z"): _pt(2.0)},
                                                  T0 + 60 * NS: {("a", "Z"): _pt(3.0)}})
    racks.end_write("r1", [T0])
    racks.wrote("r1", ("a", "Z"), {T0: _pt(2.0)})
    assert kept == {T0, T0 + 60 * NS} and set(before) == {T0 + 60 * NS}  # only the quiet one compared
    assert racks.window("r1", T0) == {("a", "Z"): _pt(2.0)}
    # a write starting during the read makes its window busy too
    read = racks.begin_read("r1", {T0})
    racks.begin_write("r1", [T0])
    racks.end_write("r1", [T0])
    assert racks.end_read("r1", read, {T0: {("a", "Z"): _pt(2.0)}})[2] == {}
