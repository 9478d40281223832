"""Held node state (collector/node_state.py) against a real InfluxDB, through real gRPC streams.

The node and job windows written from held state must be exactly (bit for bit) what a read-back
recompute writes, whatever the order batches come in: resends, late samples, batches split
differently, new streams, unary writes, unattributed shares and who-fields. And they must cost
fewer reads: counted exactly.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from gridwatt.collector.node_state import (
    HeldNodes,
    NodeHeld,
    WindowSeries,
    add_point,
    held_series,
    node_windows_from_series,
)
from gridwatt.collector.points import JobPoint
from gridwatt.collector.rollup import RackRollup
from gridwatt.collector.server import RunningCollector
from gridwatt.collector.writer_marks import WriterMarks
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc
from tests.collector.helpers import running_collector
from tests.conftest import collector_toml, influx_query

NS = 1_000_000_000
#: Sample time: three hours ago, on a whole minute (the windows are 60 s).
T0 = (time.time_ns() - 3 * 3600 * NS) // (60 * NS) * (60 * NS)
RACK = '[[racks]]\nname = "r1"\nzone = "Z"\npue = 1.3\nnodes = ["n1", "n2", "n3", "n4"]\n'


def toml(influxdb: LocalInfluxDB, database: str, settle_s: float = 0.0, rack_delay_s: float = 0.0) -> str:
    return (collector_toml(influxdb.url, database, racks=RACK)
            + f"\n[accounting]\nreplica_settle_s = {settle_s}\nrack_delay_s = {rack_delay_s}\n")


def sample(gpu: int, start_ns: int, seconds: float, power_w: float,
           shares: list[tuple[str, float, dict[str, str]]]) -> pb.GpuSample:
    return pb.GpuSample(
        gpu_index=gpu, gpu_uuid=f"GPU-{gpu}", start_ns=start_ns, end_ns=start_ns + int(seconds * NS),
        energy_j=power_w * seconds, mean_power_w=power_w, util_pct=power_w / 5, idle_s=0.0,
        jobs=[pb.JobShare(job_id=j, fraction=f, **who) for j, f, who in shares],
    )


def random_samples(rnd: random.Random, gpus: int, steps: int, step_s: int = 5) -> list[pb.GpuSample]:
    """Samples in time order (all GPUs of one step, then the next), with random energies, jobs that
    change, fractions leaving some time unattributed, and who-fields that come and go."""
    out = []
    for k in range(steps):
        for g in range(gpus):
            shares: list[tuple[str, float, dict[str, str]]] = []
            if rnd.random() < 0.8:
                who = {"user": rnd.choice(["alice", "bob"])} if rnd.random() < 0.7 else {}
                if rnd.random() < 0.5:
                    who["account"] = rnd.choice(["a1", "a 2"])
                shares.append((f"job-{(k // 20 + g) % 3}", rnd.choice([1.0, 0.5, 0.25, 0.7]), who))
            if rnd.random() < 0.3 and (not shares or shares[0][1] <= 0.5):
                shares.append(("job,x y", 0.25, {"job_name": "train=1"}))
            out.append(sample(g, T0 + k * step_s * NS, step_s, rnd.uniform(50, 700) / 1.7, shares))
    return out


def other_instance_marks(rollup: RackRollup, nodes: list[str], windows: list[int]) -> list[str]:
    """Writer mark lines of these nodes' windows by another collector instance than ``rollup``'s (so
    its final read-backs there read the job sums: collector/writer_marks.py)."""
    other = WriterMarks(rollup.resolution_ns, instance_id=rollup.marks.instance_id + 1)
    return [line for node in nodes for line in other.lines(node, windows)]


class Stream:
    """One ingest stream: send a batch, get its Ack."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.call = pb_grpc.IngestStub(self.channel).Stream()

    async def send(self, batch: pb.Batch) -> pb.Ack:
        await self.call.write(batch)
        ack = await self.call.read()
        assert isinstance(ack, pb.Ack)
        return ack

    async def close(self) -> None:
        await self.call.done_writing()
        await self.channel.close()


async def unary(port: int, batch: pb.Batch) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        ack = await pb_grpc.IngestStub(ch).Write(batch)
    assert ack.code == 0, ack.message


def snapshot(influxdb: LocalInfluxDB, database: str) -> list[Any]:
    """Every node, job_window and rack point, all fields, exactly as stored."""
    res = influx_query(influxdb.url, database,
                       "SELECT * FROM node; SELECT * FROM job_window; SELECT * FROM rack")
    return [r.get("series") for r in res]


async def read_back_everything(c: RunningCollector, nodes: list[str], windows: set[int]) -> None:
    """Recompute every window from the store, as the read-back path does (held state not used)."""
    for node in nodes:
        await c.ingestor.rollup.recompute(node, "r1", "Z", windows)


async def test_held_windows_equal_the_read_back_under_resends_late_and_split_batches(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    rnd = random.Random(9)
    async with running_collector(tmp_path, toml(influxdb, database)) as c:
        port = c.grpc_port
        samples = random_samples(rnd, gpus=4, steps=60)  # 5 minutes: 5 windows
        # GPU 3 of steps 20..29 comes late: after its own later samples (out of order in its series)
        late = [s for s in samples if s.gpu_index == 3 and T0 + 100 * NS <= s.start_ns < T0 + 150 * NS]
        ontime = [s for s in samples if s not in late]
        stream = Stream(port)
        sent: list[pb.GpuSample] = []
        batch_id = 0
        i = 0
        while i < len(ontime):
            batch_id += 1
            size = rnd.randint(1, 12)
            chunk = ontime[i:i + size]
            i += size
            roll = rnd.random()
            if roll < 0.1:
                await unary(port, pb.Batch(batch_id=batch_id, node="n1", gpu_samples=chunk))
            else:
                ack = await stream.send(pb.Batch(batch_id=batch_id, node="n1", gpu_samples=chunk))
                assert ack.code == 0, ack.message
            sent += chunk
            if roll > 0.85 and len(sent) > 4:  # a resend of stored samples, split differently
                lo = rnd.randrange(0, len(sent) - 1)
                again = sent[lo:lo + rnd.randint(1, 16)]
                batch_id += 1
                ack = await stream.send(pb.Batch(batch_id=batch_id, node="n1", gpu_samples=again))
                assert ack.code == 0, ack.message
            if 0.8 < roll <= 0.85:  # the agent reconnects (it may have written elsewhere)
                await stream.close()
                stream = Stream(port)
            if late and sent[-1].start_ns >= T0 + 170 * NS:
                batch_id += 1
                ack = await stream.send(pb.Batch(batch_id=batch_id, node="n1", gpu_samples=late))
                assert ack.code == 0, ack.message
                late = []
        await stream.close()
        rollup = c.ingestor.rollup
        held = rollup.held
        # held state was used, and read back where it had to be
        assert held.interval_checks_held > 0 and held.interval_checks_read > 0
        assert 0 < rollup.node_queries < batch_id
        before = snapshot(influxdb, database)
        windows = {T0 + k * 60 * NS for k in range(5)}
        await read_back_everything(c, ["n1"], windows)
        after = snapshot(influxdb, database)
        assert before == after  # every field of every window, bit for bit
        (gpu,) = influx_query(influxdb.url, database, "SELECT sum(energy_j) FROM gpu")
        assert gpu["series"][0]["values"][0][1] == pytest.approx(sum(s.energy_j for s in samples), rel=1e-12)
        (node,) = influx_query(influxdb.url, database,
                               "SELECT sum(it_energy_kwh), count(it_energy_kwh) FROM node")
        assert node["series"][0]["values"][0][1] * 3.6e6 == pytest.approx(sum(s.energy_j for s in samples),
                                                                          rel=1e-12)
        assert node["series"][0]["values"][0][2] == 5


async def test_reads_per_batch_are_counted_exactly(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    rnd = random.Random(3)
    async with running_collector(tmp_path, toml(influxdb, database)) as c:
        rollup = c.ingestor.rollup
        held = rollup.held
        samples = random_samples(rnd, gpus=8, steps=16, step_s=1)  # 16 s of 8 GPUs at 1 Hz
        stream = Stream(c.grpc_port)
        for k in range(16):  # one 8-sample batch per second, as a 1 Hz agent without linger sends
            ack = await stream.send(pb.Batch(batch_id=k + 1, node="n1", gpu_samples=samples[8 * k:8 * k + 8]))
            assert ack.code == 0, ack.message
        # one read when the node was first seen; then nothing but the rack's windows
        assert (held.queries, held.interval_checks_read, held.interval_checks_held) == (1, 0, 16)
        assert (rollup.node_queries, rollup.rack_queries) == (0, 16)
        # an identical resend: its interval check and its window are read back, once each
        ack = await stream.send(pb.Batch(batch_id=17, node="n1", gpu_samples=samples[8:16]))
        assert ack.code == 0, ack.message
        counts = (held.queries, held.interval_checks_read, rollup.node_queries, rollup.rack_queries)
        assert counts == (1, 1, 1, 17)
        # held again: the next batch reads nothing of the node
        more = random_samples(rnd, gpus=8, steps=17, step_s=1)[-8:]
        ack = await stream.send(pb.Batch(batch_id=18, node="n1", gpu_samples=more))
        assert ack.code == 0, ack.message
        counts = (held.queries, held.interval_checks_read, rollup.node_queries, rollup.rack_queries)
        assert counts == (1, 1, 1, 18)
        # a new stream reads the node once more, then nothing again
        await stream.close()
        stream = Stream(c.grpc_port)
        nxt = [sample(g, T0 + 17 * NS, 1, 300.0, [("job-0", 1.0, {})]) for g in range(8)]
        ack = await stream.send(pb.Batch(batch_id=19, node="n1", gpu_samples=nxt))
        assert ack.code == 0, ack.message
        # (the window has stored points this replica has not seen since: read back once)
        assert (held.queries, held.interval_checks_read, rollup.node_queries) == (2, 1, 2)
        # a unary Write is never held: read back as before (interval check and window), and dropped
        one = [sample(g, T0 + 18 * NS, 1, 300.0, [("job-0", 1.0, {})]) for g in range(8)]
        await unary(c.grpc_port, pb.Batch(batch_id=20, node="n1", gpu_samples=one))
        assert (held.queries, held.interval_checks_read, rollup.node_queries) == (2, 2, 3)
        assert held.get("n1") is None
        await stream.close()
        before = snapshot(influxdb, database)
        await read_back_everything(c, ["n1"], {T0})
        assert snapshot(influxdb, database) == before


async def test_rack_recomputes_are_debounced_across_nodes(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    """Four nodes' batches landing within rack_delay_s share one read of the rack's windows."""
    async with running_collector(tmp_path, toml(influxdb, database, rack_delay_s=5.0)) as c:
        streams = {n: Stream(c.grpc_port) for n in ("n1", "n2", "n3", "n4")}
        batches = {n: pb.Batch(batch_id=1, node=n, gpu_samples=[
            sample(g, T0, 10, 100.0 + 10 * k, [("job-0", 1.0, {})]) for g in range(8)])
            for k, n in enumerate(streams)}
        acks = await asyncio.gather(*(streams[n].send(batches[n]) for n in streams))
        assert [a.code for a in acks] == [0, 0, 0, 0]
        assert c.ingestor.rollup.rack_queries == 1
        (rack,) = influx_query(influxdb.url, database, "SELECT it_energy_kwh, nodes, gpu_count FROM rack")
        assert rack["series"][0]["values"] == [[T0, pytest.approx(8 * 10 * (100 + 110 + 120 + 130) / 3.6e6,
                                                                  rel=1e-12), 4, 32]]
        for s in streams.values():
            await s.close()


async def test_interval_conflicts_are_refused_with_held_state(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    async with running_collector(tmp_path, toml(influxdb, database)) as c:
        held = c.ingestor.rollup.held
        stream = Stream(c.grpc_port)
        job = [("job-0", 1.0, {})]
        first = [sample(g, T0 + k * 10 * NS, 10, 300.0, job) for k in range(3) for g in range(2)]
        assert (await stream.send(pb.Batch(batch_id=1, node="n1", gpu_samples=first))).code == 0
        cases = [
            [sample(0, T0 + 25 * NS, 10, 300.0, job)],  # overlaps a stored interval
            [sample(0, T0 + 10 * NS, 10, 300.0, [("other", 1.0, {})])],  # re-attributed
            [sample(1, T0 + 30 * NS, 10, 300.0, job),
             sample(1, T0 + 35 * NS, 10, 300.0, job)],  # overlapping within the batch
            [sample(1, T0 + 20 * NS, 30, 300.0, job)],  # starts inside the last one, ends after it
        ]
        codes = []
        for k, case in enumerate(cases):
            ack = await stream.send(pb.Batch(batch_id=2 + k, node="n1", gpu_samples=case))
            codes.append((ack.code, ack.message.split(":")[0]))
        assert codes == [(3, "interval_conflict")] * 4
        # the in-batch overlap was found from held state; the others needed the store
        assert (held.interval_checks_held, held.interval_checks_read) == (2, 3)
        assert (await stream.send(pb.Batch(batch_id=9, node="n1", gpu_samples=first))).code == 0  # resend
        after = [sample(g, T0 + 30 * NS, 10, 300.0, job) for g in range(2)]
        assert (await stream.send(pb.Batch(batch_id=10, node="n1", gpu_samples=after))).code == 0
        assert (held.interval_checks_held, held.interval_checks_read) == (3, 4)
        await stream.close()
        (gpu,) = influx_query(influxdb.url, database, "SELECT sum(energy_j), count(energy_j) FROM gpu")
        assert gpu["series"][0]["values"][0][1:] == [8 * 3000.0, 8]


async def test_node_failing_over_between_replicas_keeps_windows_exact(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    """n1 streams to A, fails over to B, comes back to A, within the same windows; n2 stays on B."""
    rnd = random.Random(5)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cfg = toml(influxdb, database)
    async with running_collector(tmp_path / "a", cfg) as a, running_collector(tmp_path / "b", cfg) as b:
        s1 = random_samples(rnd, gpus=4, steps=36)  # 3 minutes
        s2 = random_samples(rnd, gpus=4, steps=36)
        n2 = Stream(b.grpc_port)
        legs = [(a, 0, 40), (b, 40, 70), (a, 70, 110), (b, 110, 144)]
        k = 0
        for replica, lo, hi in legs:
            stream = Stream(replica.grpc_port)
            for i in range(lo, hi, 6):
                k += 1
                ack = await stream.send(pb.Batch(batch_id=k, node="n1", gpu_samples=s1[i:min(i + 6, hi)]))
                assert ack.code == 0, ack.message
                ack = await n2.send(pb.Batch(batch_id=k, node="n2", gpu_samples=s2[i:min(i + 6, hi)]))
                assert ack.code == 0, ack.message
            await stream.close()
        await n2.close()
        assert a.ingestor.rollup.held.queries == 2 and b.ingestor.rollup.held.queries == 3
        before = snapshot(influxdb, database)
        await read_back_everything(a, ["n1", "n2"], {T0 + m * 60 * NS for m in range(3)})
        assert snapshot(influxdb, database) == before
        (node,) = influx_query(influxdb.url, database, "SELECT sum(it_energy_kwh) FROM node")
        assert node["series"][0]["values"][0][1] * 3.6e6 == pytest.approx(
            sum(s.energy_j for s in s1 + s2), rel=1e-12)


async def test_windows_rewritten_elsewhere_are_read_back_after_settle(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    """Another writer changes n1's job points in a window this replica holds (as a revisit on another
    replica does, with its writer mark): the next batch writes the held (stale) sums, and the read-back
    settle_s later rewrites the window from the store."""
    async with running_collector(tmp_path, toml(influxdb, database, settle_s=3.0)) as c:
        rollup = c.ingestor.rollup
        stream = Stream(c.grpc_port)
        job = [("job-0", 1.0, {})]
        assert (await stream.send(pb.Batch(batch_id=1, node="n1", gpu_samples=[
            sample(0, T0, 10, 300.0, job)]))).code == 0
        # the other writer: the same job point, its energy doubled
        line = (f"job,job_id=job-0,node=n1,rack=r1,gpu=0 energy_j=6000.0,facility_energy_j=7800.0,co2e_g=1.0,"
                f"estimated_co2e_g=0.0,gpu_s=10.0,util_pct_s=600.0,idle_s=0.0,idle_energy_j=0.0,"
                f"fraction=1.0,end_ns={T0 + 10 * NS}i {T0}")
        await c.store.write_lines([*other_instance_marks(rollup, ["n1"], [T0]), line])
        assert (await stream.send(pb.Batch(batch_id=2, node="n1", gpu_samples=[
            sample(0, T0 + 10 * NS, 10, 300.0, job)]))).code == 0
        (node,) = influx_query(influxdb.url, database, "SELECT it_energy_kwh FROM node")
        assert node["series"][0]["values"][0][1] * 3.6e6 == pytest.approx(6000.0, rel=1e-12)  # held
        deadline = time.monotonic() + 30
        while rollup.final_runs < 1:
            assert time.monotonic() < deadline, "the read-back never ran"
            await asyncio.sleep(0.1)
        assert rollup.final_mismatches == 1
        (node, rack) = influx_query(influxdb.url, database, "SELECT it_energy_kwh FROM node; "
                                    "SELECT it_energy_kwh FROM rack")
        assert node["series"][0]["values"][0][1] * 3.6e6 == pytest.approx(9000.0, rel=1e-12)
        assert rack["series"][0]["values"][0][1] * 3.6e6 == pytest.approx(9000.0, rel=1e-12)
        # held again from the read-back: the next batch adds to the store's values
        assert (await stream.send(pb.Batch(batch_id=3, node="n1", gpu_samples=[
            sample(0, T0 + 20 * NS, 10, 300.0, job)]))).code == 0
        (node,) = influx_query(influxdb.url, database, "SELECT it_energy_kwh FROM node")
        assert node["series"][0]["values"][0][1] * 3.6e6 == pytest.approx(12000.0, rel=1e-12)
        await stream.close()


def _point(gpu: str, job: str, start_ns: int, energy_j: float = 1.0) -> JobPoint:
    return JobPoint(gpu, job, start_ns, start_ns + NS, (energy_j,) * 8, {})


def test_held_state_is_bounded() -> None:
    """Windows per node, series per window and nodes are bounded; what is forgotten is read back."""
    held_nodes = HeldNodes(None, 60 * NS, max_nodes=2, max_windows=3, max_series_per_window=5)  # type: ignore[arg-type]
    held = NodeHeld(known_from_ns=T0, latest_start_ns=None, horizon_ns=T0, gpu_max_end={})
    # a batch over 10 windows: all held while its lines are made, then only the newest 3
    points = [_point("0", "j", T0 + k * 60 * NS) for k in range(10)]
    windows = {T0 + k * 60 * NS for k in range(10)}
    assert held_nodes.wrote(held, [], points, windows) == set()
    assert len(held.windows) == 10
    held_nodes.evict(held)
    assert sorted(held.windows) == [T0 + k * 60 * NS for k in (7, 8, 9)]
    assert held.known_from_ns == T0 + 7 * 60 * NS
    assert not held.known(T0 + 6 * 60 * NS) and held.known(T0 + 11 * 60 * NS)  # forgotten / empty
    # a sixth series in one window: the window is no longer held (read back instead)
    t = T0 + 9 * 60 * NS
    many = [_point(str(g), "j", t + NS) for g in range(1, 6)]
    assert held_nodes.wrote(held, [], many, {t}) == {t}
    assert t not in held.windows and not held.known(t)
    # a point not after its series (a resend): the window is read back
    t8 = T0 + 8 * 60 * NS
    assert held_nodes.wrote(held, [], [_point("0", "j", t8)], {t8}) == {t8}
    # nodes: the least recently used goes first, and a batch still holding it stops using it
    first = held_nodes.hold("a", NodeHeld(T0, None, T0, {}))
    held_nodes.hold("b", NodeHeld(T0, None, T0, {}))
    held_nodes.hold("c", NodeHeld(T0, None, T0, {}))
    assert held_nodes.get("a") is None and not first.valid and len(held_nodes) == 2


def test_held_sums_add_like_influxdb() -> None:
    """Series sums add in time order, windows add series by GPU tag then job id (as strings)."""
    window: WindowSeries = {}
    for k, e in enumerate((0.1, 0.2, 0.3)):
        assert add_point(window, _point("10", "b", T0 + k * NS, e))
    assert add_point(window, _point("2", "a", T0, 0.7))
    assert window[("10", "b")].sums[0] == (0.1 + 0.2) + 0.3
    series = held_series({T0: window}, [T0])
    assert [(g, j) for _, g, j, _ in series] == [("10", "b"), ("2", "a")]  # "10" < "2"
    windows, jobs = node_windows_from_series(series)
    assert windows[T0]["e"] == (0.0 + ((0.1 + 0.2) + 0.3)) + 0.7
    assert windows[T0]["n"] == 2 and jobs[(T0, "b")]["n"] == 1 and jobs[(T0, "b")]["end_ns"] == T0 + 3 * NS


def test_a_window_is_read_back_once_it_has_closed() -> None:
    """The read-back of a window written from held state waits for the window's end plus settle_s
    (sample time on the wall clock), and for settle_s after the write."""
    rollup = RackRollup(None, 60, settle_s=2.0)  # type: ignore[arg-type]
    now = time.monotonic()
    open_window = time.time_ns() // (60 * NS) * (60 * NS)
    assert rollup._final_wait_s(open_window, now) > 2.0  # still filling: after its end
    assert 1.0 < rollup._final_wait_s(T0, now) <= 2.0  # long closed: settle_s after the write
    assert rollup._final_wait_s(T0, now - 5) == 0.0
