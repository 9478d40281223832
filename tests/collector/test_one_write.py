"""One store write per streamed batch (``RackRollup.write_batch``), against a real InfluxDB.

A batch of a held node in a held rack goes to InfluxDB in one write request that carries its gpu and
job lines, the node and job_window points they make and the rack point: counted by a front
(tests/influx_front.py) that forwards to the real server. The windows stored that way must be bit for
bit what a read-back recompute writes, the ack must wait for that write, and where InfluxDB refuses a
sample's line or a window's line, the windows end up as the read-back says (as before one write).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from gridwatt.collector.node_state import HeldNodes, NodeHeld, add_point
from gridwatt.collector.points import JobPoint
from gridwatt.collector.rollup import _Changes
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.v1 import telemetry_pb2 as pb
from tests.collector.helpers import running_collector
from tests.collector.test_metrics import scrape, v
from tests.collector.test_node_state import Stream, sample, snapshot
from tests.collector.test_rack_state import (
    assert_racks_add_up_in_node_order,
    marked_elsewhere,
    read_back_everything,
)
from tests.conftest import collector_toml, influx_query
from tests.influx_front import InfluxFront

NS = 1_000_000_000
J_PER_KWH = 3.6e6
#: Sample time: three hours ago, on a whole minute (the windows are 60 s).
T0 = (time.time_ns() - 3 * 3600 * NS) // (60 * NS) * (60 * NS)
NODES = ("n1", "n2", "n3", "n4")
RACK = '[[racks]]\nname = "r1"\nzone = "Z"\npue = 1.3\nnodes = ["n1", "n2", "n3", "n4"]\n'
POWER_W = {"n1": 300.0, "n2": 310.0, "n3": 320.0, "n4": 330.0}
JOB = [("job-0", 1.0, {"user": "alice"})]


def toml(url: str, database: str) -> str:
    return collector_toml(url, database, racks=RACK) + "\n[accounting]\nreplica_settle_s = 0\n"


def second(node: str, k: int, who: bool = True) -> pb.Batch:
    """Second k of a node: 8 GPUs, one 1-s sample each, all of job-0 (run by alice, with ``who``)."""
    shares = JOB if who else [("job-0", 1.0, {})]
    return pb.Batch(batch_id=k + 1, node=node,
                    gpu_samples=[sample(g, T0 + k * NS, 1, POWER_W[node], shares) for g in range(8)])


def measurements(body: str) -> list[str]:
    return sorted(line.split(",", 1)[0] for line in body.splitlines())


async def test_a_streamed_batch_is_one_write_with_its_windows_and_they_equal_the_read_back(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    async with InfluxFront(influxdb.url) as front, running_collector(
        tmp_path, toml(front.url, database)
    ) as c:
        rollup = c.ingestor.rollup
        streams = {n: Stream(c.grpc_port) for n in NODES}
        for node in NODES:  # streams open, windows T0 held (the rack's read once all four stream here)
            ack = await streams[node].send(second(node, 0))
            assert ack.code == 0, ack.message
        assert rollup.racks.eligible("r1") and rollup.rack_queries == 4
        front.writes.clear()
        one, rack_one = rollup.one_writes, rollup.rack_one_writes
        for k in range(1, 6):
            for node in NODES:  # one at a time: each finds the rack free
                ack = await streams[node].send(second(node, k))
                assert (ack.code, ack.stored_samples) == (0, 8), ack.message
        # 20 batches, 20 write requests, each: 8 gpu + 8 job lines, its node, job_window and rack point
        assert len(front.writes) == 20
        assert {tuple(measurements(w.body)) for w in front.writes} == {
            tuple(sorted(["gpu"] * 8 + ["job"] * 8 + ["job_window", "node", "rack"]))}
        assert (rollup.one_writes - one, rollup.rack_one_writes - rack_one) == (20, 20)
        assert (rollup.rack_queries, rollup.node_queries) == (4, 0)  # nothing read meanwhile
        _, metrics = await scrape(c.http_port or 0)  # the same counters on /metrics
        assert (v(metrics, "rollup_one_writes_total", windows="node"),
                v(metrics, "rollup_one_writes_total", windows="rack")) == (one + 20, rack_one + 20)
        queries = {kind: v(metrics, "rollup_queries_total", kind=kind) for kind in ("rack", "node", "fill")}
        assert queries == {"rack": 4, "node": 0, "fill": 4}
        assert v(metrics, "rollup_read_back_mismatches_total", kind="node") == 0
        for s in streams.values():
            await s.close()
        # the rack point: the stored node points added in node order (the test's own sum), and the
        # hand-computed energy: 8 GPUs x 6 s x each node's power
        assert assert_racks_add_up_in_node_order(influxdb, database) == 1
        (rack,) = influx_query(influxdb.url, database, "SELECT it_energy_kwh, gpu_count, nodes FROM rack")
        [[t, kwh, gpus, nodes]] = rack["series"][0]["values"]
        assert (t, gpus, nodes) == (T0, 32, 4)
        assert kwh * J_PER_KWH == pytest.approx(8 * 6 * sum(POWER_W.values()), rel=1e-12)
        before = snapshot(influxdb, database)
        await read_back_everything(c, list(NODES), {T0})
        assert snapshot(influxdb, database) == before  # node, job_window and rack: every field, bit for bit


async def test_the_ack_waits_for_the_one_write(tmp_path: Path, database: str) -> None:
    with LocalInfluxDB(tmp_path / "influx") as db:
        toml_text = toml(db.url, database)
        async with running_collector(tmp_path, toml_text) as c:
            rollup = c.ingestor.rollup
            streams = {n: Stream(c.grpc_port) for n in NODES}
            for node in NODES:
                assert (await streams[node].send(second(node, 0))).code == 0
            one = rollup.rack_one_writes
            db.pause()  # InfluxDB answers nothing: the write hangs in flight
            try:
                send = asyncio.ensure_future(streams["n1"].send(second("n1", 1)))
                deadline = time.monotonic() + 30
                while c.store.group is not None and c.store.group.in_flight == 0:
                    assert time.monotonic() < deadline, "the write never started"
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.5)
                assert not send.done()  # no ack before the samples and their windows are stored
            finally:
                db.resume()
            ack = await send
            assert (ack.code, ack.stored_samples, rollup.rack_one_writes - one) == (0, 8, 1)
            (rack,) = influx_query(db.url, database, "SELECT it_energy_kwh FROM rack")
            assert rack["series"][0]["values"][0][1] * J_PER_KWH == pytest.approx(
                8 * (2 * 300.0 + 310.0 + 320.0 + 330.0), rel=1e-12)
            for s in streams.values():
                await s.close()


async def test_a_refused_sample_line_in_the_one_write_leaves_the_windows_as_the_read_back(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    """GPU 3's job point of n1's second 1 names a user, and InfluxDB already holds ``user`` as an
    integer field of ``job`` in that shard: it refuses that line alone (field type conflict). That
    sample is rejected, the others stored, and the windows written in the same request (which
    counted it) are recomputed from the store before the ack."""
    async with running_collector(tmp_path, toml(influxdb.url, database)) as c:
        streams = {n: Stream(c.grpc_port) for n in NODES}
        for node in NODES:
            assert (await streams[node].send(second(node, 0, who=False))).code == 0
        await c.store.write_lines([f"job,gpu=0,job_id=other,node=zz,rack=zz user=1i {T0}"])
        batch = second("n1", 1, who=False)
        batch.gpu_samples[3].jobs[0].user = "alice"
        ack = await streams["n1"].send(batch)
        assert (ack.code, ack.stored_samples) == (3, 7), ack.message  # INVALID_ARGUMENT, 7 stored
        assert "refused 1 of 8 samples" in ack.message
        one = c.ingestor.rollup.rack_one_writes
        assert (await streams["n2"].send(second("n2", 1, who=False))).code == 0
        assert c.ingestor.rollup.rack_one_writes == one + 1  # the rack is summed from held state again
        for s in streams.values():
            await s.close()
        before = snapshot(influxdb, database)
        await read_back_everything(c, list(NODES), {T0})
        assert snapshot(influxdb, database) == before
        (node, rack) = influx_query(influxdb.url, database, "SELECT gpu_seconds FROM node WHERE node = 'n1'; "
                                    "SELECT gpu_seconds FROM rack")
        # n1: 8 GPU-seconds of second 0 and the 7 stored job points of second 1; the rack adds n2's 16
        # and n3's and n4's 8 each
        assert node["series"][0]["values"] == [[T0, 15.0]]
        assert rack["series"][0]["values"] == [[T0, 47.0]]


def test_follow_is_what_wrote_holds_after_the_write() -> None:
    """``follow`` (before the write) gives exactly the windows ``wrote`` holds after it, and leaves the
    held state untouched; where ``wrote`` would read a window back, ``follow`` says None."""
    res = 60 * NS
    nodes = HeldNodes(store=None, resolution_ns=res)  # type: ignore[arg-type]

    def point(gpu: str, job: str, start_s: int, e: float) -> JobPoint:
        return JobPoint(gpu, job, T0 + start_s * NS, T0 + (start_s + 1) * NS, (e,) * 8, {"user": job})

    def held() -> NodeHeld:
        h = NodeHeld(known_from_ns=T0, latest_start_ns=None, horizon_ns=0, gpu_max_end={})
        h.windows[T0] = {}
        for p in (point("0", "a", 0, 1.5), point("1", "a", 0, 2.25)):
            assert add_point(h.windows[T0], p)
        return h

    batch = [point("0", "a", 1, 0.1), point("0", "a", 2, 0.2), point("1", "b", 1, 3.0),
             point("0", "a", 61, 7.0)]
    h1, h2 = held(), held()

    def copy(h: NodeHeld) -> dict[int, dict[tuple[str, str], tuple[list[float], int, dict[str, str]]]]:
        return {t: {k: (list(s.sums), s.end_ns, dict(s.who)) for k, s in w.items()}
                for t, w in h.windows.items()}

    before = copy(h1)
    follow = nodes.follow(h1, batch, {T0, T0 + res})
    assert follow is not None
    assert copy(h1) == before  # untouched
    assert nodes.wrote(h2, [], batch, {T0, T0 + res}) == set()
    assert {t: {k: (s.sums, s.end_ns, s.who) for k, s in w.items()} for t, w in follow.items()} == {
        t: {k: (s.sums, s.end_ns, s.who) for k, s in w.items()} for t, w in h2.windows.items()}
    assert follow[T0][("0", "a")].sums == [1.5 + 0.1 + 0.2] * 8
    # a resend of a point already held, and a window not known: a read is needed
    assert nodes.follow(h1, [point("0", "a", 0, 1.5)], {T0}) is None
    assert nodes.follow(h1, [point("0", "a", -60, 1.0)], {T0 - res}) is None


async def test_a_held_racks_next_window_is_read_ahead_and_its_first_batches_take_one_write(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    """Real time (samples of the current minute): once a held rack's window is written, its next one
    is read before it starts, so the next window's first batches find it held: no read on their way."""
    into_s = time.time_ns() % (60 * NS) / NS
    if not 4.0 <= into_s <= 40.0:  # the next minute must still be to come when the batches land
        await asyncio.sleep((64.0 - into_s) % 60)
    s0 = time.time_ns() - 2 * NS
    w = s0 - s0 % (60 * NS)

    def batch(node: str, start_ns: int) -> pb.Batch:
        return pb.Batch(batch_id=start_ns // NS, node=node, gpu_samples=[
            sample(g, start_ns, 1, POWER_W[node], [("job-0", 1.0, {})]) for g in range(8)])

    async with running_collector(tmp_path, toml(influxdb.url, database)) as c:
        rollup = c.ingestor.rollup
        # the read ahead starts at once: r1's offset within the lead is beyond the next window's start
        share = zlib.crc32(b"r1") % 1000 / 1000
        rollup.prefetch_lead_s = 1.0 + 200.0 / share
        streams = {n: Stream(c.grpc_port) for n in NODES}
        for node in NODES:
            assert (await streams[node].send(batch(node, s0))).code == 0
        # three reads while the rack is not held (its last stream not yet open), one that holds w,
        # then the read ahead of w + 60 s
        deadline = time.monotonic() + 30
        while rollup.racks.held("r1", w + 60 * NS) is None:
            assert time.monotonic() < deadline, "the next window was never read ahead"
            await asyncio.sleep(0.02)
        assert (rollup.rack_queries, rollup.rack_prefetches) == (5, 1)
        one = rollup.rack_one_writes
        rollup.prefetch_lead_s = 0  # (no read ahead of w + 120 s: it would hold the rack's lock meanwhile)
        for node in NODES:
            ack = await streams[node].send(batch(node, w + 60 * NS))
            assert ack.code == 0, ack.message
        assert rollup.rack_one_writes == one + 4  # each with its rack point, none read on the way
        assert (rollup.rack_queries, rollup.rack_prefetches) == (5, 1)
        for s in streams.values():
            await s.close()
        assert assert_racks_add_up_in_node_order(influxdb, database) == 2
        (rack,) = influx_query(influxdb.url, database, "SELECT it_energy_kwh, gpu_count FROM rack")
        assert [(t, gpus) for t, _, gpus in rack["series"][0]["values"]] == [(w, 32), (w + 60 * NS, 32)]
        assert rack["series"][0]["values"][1][1] * J_PER_KWH == pytest.approx(8 * sum(POWER_W.values()),
                                                                              rel=1e-12)
        before = snapshot(influxdb, database)
        await read_back_everything(c, list(NODES), {w, w + 60 * NS})
        assert snapshot(influxdb, database) == before


async def test_a_read_back_reads_again_where_the_node_wrote_during_its_read(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    """A final read-back reads without the node's lock (its batches go on meanwhile). A batch of the
    node lands in the window between that read and the read-back taking the lock: the read-back reads
    that node again under its lock, so what it holds and writes has the batch (else the node window
    would lose its 1,000 J). Another instance marked the window, so the read-back reads the sums."""
    text = collector_toml(influxdb.url, database, racks=RACK) + "\n[accounting]\nreplica_settle_s = 0.3\n"
    async with running_collector(tmp_path, text) as c:
        rollup = c.ingestor.rollup
        await marked_elsewhere(c, ["n1"], [T0])
        stream = Stream(c.grpc_port)
        job = [("job-0", 1.0, {})]
        ack = await stream.send(pb.Batch(batch_id=1, node="n1", gpu_samples=[sample(0, T0, 10, 300.0, job)]))
        assert ack.code == 0, ack.message
        reads: list[dict[str, set[int]]] = []
        read = rollup._read_node_rows

        async def read_then_a_batch_lands(nodes: dict[str, set[int]], *where: str) -> Any:
            reads.append(dict(nodes))
            rows = await read(nodes, *where)
            if len(reads) == 1:  # stored before the read-back takes the node's lock
                late = pb.Batch(batch_id=2, node="n1", gpu_samples=[sample(0, T0 + 10 * NS, 10, 100.0, job)])
                assert (await stream.send(late)).code == 0
            return rows

        rollup._read_node_rows = read_then_a_batch_lands  # type: ignore[method-assign]
        deadline = time.monotonic() + 30
        while len(reads) < 2 or rollup.pending_read_backs():
            assert time.monotonic() < deadline, "the read-backs never ran"
            await asyncio.sleep(0.05)
        assert reads == [{"n1": {T0}}] * 3  # the read, n1 read again under its lock, the late batch's own
        assert (rollup.read_backs_again, rollup.final_mismatches) == (1, 0)
        await stream.close()
        (node,) = influx_query(influxdb.url, database, "SELECT it_energy_kwh FROM node")
        assert node["series"][0]["values"] == [[T0, pytest.approx((3000.0 + 1000.0) / J_PER_KWH, rel=1e-12)]]
        before = snapshot(influxdb, database)
        await read_back_everything(c, ["n1"], {T0})
        assert snapshot(influxdb, database) == before


def test_changes_say_whether_a_watched_window_changed_and_keep_nothing_unwatched() -> None:
    changes = _Changes()
    changes.bump([T0])  # no read watches: nothing kept
    assert changes.watches == []
    first = changes.watch([T0, T0 + 60 * NS])
    other = changes.watch([T0 + 120 * NS])
    for k in range(3, 3 + 200):  # a backfill writing later windows: no change of the watched ones
        changes.bump([T0 + k * 60 * NS])
    changes.bump([T0 + 60 * NS])
    assert changes.unwatch(first) and not changes.unwatch(other)
    assert changes.watches == []
    again = changes.watch([T0])
    changes.bump([T0 + 60 * NS])
    assert not changes.unwatch(again)


async def test_batches_that_find_their_rack_busy_share_one_write_with_its_rack_point(
    tmp_path: Path, database: str
) -> None:
    """n1's batch holds the rack (its write, with the rack point, hangs in a paused InfluxDB); the
    batches of n2, n3 and n4 that come meanwhile join the rack's next turn: nothing of theirs is sent
    while n1's rack point is in flight, then one request carries all three (their 48 lines, 3 node and
    3 job_window points) and one rack point summed over all four nodes: 2 requests, no rack recompute."""
    with LocalInfluxDB(tmp_path / "influx") as db:
        async with InfluxFront(db.url) as front, running_collector(tmp_path, toml(front.url, database)) as c:
            rollup = c.ingestor.rollup
            streams = {n: Stream(c.grpc_port) for n in NODES}
            for node in NODES:
                assert (await streams[node].send(second(node, 0))).code == 0
            front.writes.clear()
            turns, one, rack_reads = rollup.rack_turns, rollup.rack_one_writes, rollup.rack_queries
            db.pause()
            try:
                sends = [asyncio.ensure_future(streams["n1"].send(second("n1", 1)))]
                deadline = time.monotonic() + 30
                while len(front.writes) < 1:
                    assert time.monotonic() < deadline, "n1's write never started"
                    await asyncio.sleep(0.02)
                sends += [asyncio.ensure_future(streams[n].send(second(n, 1))) for n in NODES[1:]]
                while sum(len(turn.members) for turn in rollup._turns.values()) < 3:
                    assert time.monotonic() < deadline, "the other batches never joined the rack's turn"
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.3)
                assert len(front.writes) == 1 and not any(s.done() for s in sends)
            finally:
                db.resume()
            acks = await asyncio.gather(*sends)
            assert [(a.code, a.stored_samples) for a in acks] == [(0, 8)] * 4
            assert len(front.writes) == 2
            assert measurements(front.writes[0].body) == sorted(["gpu"] * 8 + ["job"] * 8 + [
                "job_window", "node", "rack"])
            assert measurements(front.writes[1].body) == sorted(["gpu"] * 24 + ["job"] * 24 + [
                "job_window"] * 3 + ["node"] * 3 + ["rack"])
            assert (rollup.rack_turns - turns, rollup.rack_one_writes - one) == (2, 4)
            assert rollup.rack_queries == rack_reads  # summed from held state, nothing read
            _, metrics = await scrape(c.http_port or 0)
            assert v(metrics, "rollup_rack_turns_total") == turns + 2
            for s in streams.values():
                await s.close()
            # the rack point: 8 GPUs x 2 s x each node's power, over the four nodes
            assert assert_racks_add_up_in_node_order(db, database) == 1
            (rack,) = influx_query(db.url, database, "SELECT it_energy_kwh, gpu_count, nodes FROM rack")
            [[t, kwh, gpus, nodes]] = rack["series"][0]["values"]
            assert (t, gpus, nodes) == (T0, 32, 4)
            assert kwh * J_PER_KWH == pytest.approx(8 * 2 * sum(POWER_W.values()), rel=1e-12)
            before = snapshot(db, database)
            await read_back_everything(c, list(NODES), {T0})
            assert snapshot(db, database) == before


async def test_a_refused_sample_line_in_a_rack_turn_leaves_node_and_rack_as_the_read_back(
    tmp_path: Path, database: str
) -> None:
    """As the test above, but InfluxDB refuses one job line of n3's batch in the turn (``user`` is an
    integer field of ``job`` already): n3's 7 other samples are stored, its windows are read back and
    rewritten, and the rack recomputed, before its ack; the rack point the turn wrote (with n3's
    8 GPU-seconds) ends up as n3's 7: 16 + 16 + 15 + 16 GPU-seconds, equal to a read-back."""
    with LocalInfluxDB(tmp_path / "influx") as db:
        async with InfluxFront(db.url) as front, running_collector(tmp_path, toml(front.url, database)) as c:
            rollup = c.ingestor.rollup
            streams = {n: Stream(c.grpc_port) for n in NODES}
            for node in NODES:
                assert (await streams[node].send(second(node, 0, who=False))).code == 0
            await c.store.write_lines([f"job,gpu=0,job_id=other,node=zz,rack=zz user=1i {T0}"])
            front.writes.clear()
            one = rollup.rack_one_writes
            bad = second("n3", 1, who=False)
            bad.gpu_samples[3].jobs[0].user = "alice"
            db.pause()
            try:
                sends = [asyncio.ensure_future(streams["n1"].send(second("n1", 1, who=False)))]
                deadline = time.monotonic() + 30
                while len(front.writes) < 1:
                    assert time.monotonic() < deadline, "n1's write never started"
                    await asyncio.sleep(0.02)
                batches = {n: bad if n == "n3" else second(n, 1, who=False) for n in NODES[1:]}
                sends += [asyncio.ensure_future(streams[n].send(b)) for n, b in batches.items()]
                while sum(len(turn.members) for turn in rollup._turns.values()) < 3:
                    assert time.monotonic() < deadline, "the other batches never joined the rack's turn"
                    await asyncio.sleep(0.02)
            finally:
                db.resume()
            acks = await asyncio.gather(*sends)
            assert [(a.code, a.stored_samples) for a in acks] == [(0, 8), (0, 8), (3, 7), (0, 8)]
            assert rollup.rack_one_writes - one == 4  # the turn stored its rack point; n3 recomputed it
            for s in streams.values():
                await s.close()
            (node, rack) = influx_query(db.url, database, "SELECT gpu_seconds FROM node WHERE node = 'n3'; "
                                        "SELECT gpu_seconds FROM rack")
            assert node["series"][0]["values"] == [[T0, 15.0]]
            assert rack["series"][0]["values"] == [[T0, 63.0]]
            before = snapshot(db, database)
            await read_back_everything(c, list(NODES), {T0})
            assert snapshot(db, database) == before
