"""Final read-backs: writer marks first, then only what differs rewritten, on a real InfluxDB.

A final read-back first reads the writer marks of its windows (collector/writer_marks.py). Where this
collector instance is the only writer, it reads nothing more: a plain stream through one collector reads
no job sums at all, writes nothing after the acks but rack settles, and its totals are exact. Where
another instance marked the window (another replica's write, a restarted collector's old instance), it
reads, in one request, the sums of the node's ``job`` points in its windows and then the ``node`` and
``job_window`` points stored there, and rewrites only those that differ from what the sums make (and
the rack where a node point moved). Here: nothing differs in a window another instance only marked (no
node or job_window write at all); a stale point written by "another replica" after this one's last write
is put right, with its rack, though held state agrees with the sums (so a comparison with held state
instead of the store would miss it); job points of n1 written by another replica after the ack are
added to n1's node and job_window points and its rack; a restarted collector reads whole the windows its
old instance wrote.

Each test below fails where the check is forced to answer "only this instance" (checked by hand by
making ``WriterMarks.only_mine`` return every window).
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.v1 import telemetry_pb2 as pb
from tests.collector.helpers import RunningCollector, running_collector
from tests.collector.test_metrics import scrape, v
from tests.collector.test_node_state import Stream, other_instance_marks, sample, snapshot
from tests.collector.test_rack_state import assert_racks_add_up_in_node_order, read_back_everything, settled
from tests.conftest import collector_toml, influx_query
from tests.influx_front import InfluxFront

NS = 1_000_000_000
J_PER_KWH = 3.6e6
#: Sample time: three hours ago, on a whole minute (the windows are 60 s).
T0 = (time.time_ns() - 3 * 3600 * NS) // (60 * NS) * (60 * NS)
#: r1 has four nodes; only n1 and n2 stream here, so r1 is not held: its windows are read and settled
RACK = '[[racks]]\nname = "r1"\nzone = "Z"\npue = 1.5\nnodes = ["n1", "n2", "n3", "n4"]\n'
JOB = [("job-0", 1.0, {"user": "alice"})]
POWER_W = {"n1": 300.0, "n2": 200.0}


def toml(url: str, database: str, settle_s: float) -> str:
    return collector_toml(url, database, racks=RACK) + f"\n[accounting]\nreplica_settle_s = {settle_s}\n"


def batch(node: str, k: int, start_ns: int) -> pb.Batch:
    """8 GPUs, one 10-s sample each at ``start_ns``, all of job-0 (run by alice)."""
    return pb.Batch(batch_id=k, node=node,
                    gpu_samples=[sample(g, start_ns, 10, POWER_W[node], JOB) for g in range(8)])


def write_lines(influxdb: LocalInfluxDB, database: str, lines: list[str]) -> None:
    """Write points straight to InfluxDB, as another replica would."""
    req = urllib.request.Request(f"{influxdb.url}/write?db={database}&precision=ns",
                                 data="\n".join(lines).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 204


async def send_acked(streams: dict[str, Stream], k: int, start_ns: int) -> None:
    """Batch ``k`` of every node (in the streams' order) at ``start_ns``, each acknowledged."""
    for node, stream in streams.items():
        ack = await stream.send(batch(node, k, start_ns))
        assert ack.code == 0, ack.message


async def settle_and_close(c: RunningCollector, streams: dict[str, Stream]) -> None:
    """Wait for the collector's read-backs and settles, then close the streams."""
    await settled(c)
    for stream in streams.values():
        await stream.close()


def measurements(body: str) -> set[str]:
    return {line.split(",", 1)[0] for line in body.splitlines()}




async def test_a_plain_stream_through_one_collector_reads_no_job_sums(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    """n1 and n2 stream three batches each into two windows: each node's windows are marked once, by
    this instance; every final read-back reads the marks only (2 nodes x 2 windows skipped) and writes
    nothing; the node and rack points are exact."""
    async with InfluxFront(influxdb.url) as front, running_collector(
        tmp_path, toml(front.url, database, 0.3)
    ) as c:
        rollup = c.ingestor.rollup
        streams = {n: Stream(c.grpc_port) for n in POWER_W}
        for k, t in enumerate((T0, T0 + 10 * NS, T0 + 60 * NS), start=1):  # two windows
            await send_acked(streams, k, t)
        acked = len(front.writes)
        await settle_and_close(c, streams)
        assert rollup.final_runs > 0 and rollup.final_mismatches == 0
        assert rollup.read_back_sums_skipped == 4 and rollup.mark_queries >= 1
        assert rollup.node_queries == 0  # no job sums read, ever
        assert (rollup.read_back_kept, rollup.read_back_rewrites) == (0, 0)
        assert all(measurements(w.body) <= {"rack"} for w in front.writes[acked:])  # rack settles only
        # one mark per node and window (the second batch of T0 needed none), at the instance's offset
        assert (rollup.marks.written, rollup.marks.refused) == (4, 0)
        me, offset = rollup.marks.instance_id, rollup.marks.instance_id % (60 * NS)
        (marks,) = influx_query(influxdb.url, database, "SELECT w FROM window_writer GROUP BY node")
        assert {s["tags"]["node"]: s["values"] for s in marks["series"]} == {
            n: [[T0 + offset, me], [T0 + 60 * NS + offset, me]] for n in POWER_W}
        _, metrics = await scrape(c.http_port or 0)
        assert v(metrics, "rollup_read_back_sums_skipped_total") == 4
        assert v(metrics, "rollup_queries_total", kind="marks") == rollup.mark_queries
        assert assert_racks_add_up_in_node_order(influxdb, database) == 2
        (node,) = influx_query(influxdb.url, database,
                               "SELECT it_energy_kwh FROM node WHERE node = 'n1' GROUP BY node")
        assert [[t, kwh * J_PER_KWH] for t, kwh in node["series"][0]["values"]] == [
            [T0, pytest.approx(2 * 8 * 10 * 300.0, rel=1e-12)], [T0 + 60 * NS, pytest.approx(8 * 10 * 300.0)]]
        (job_window,) = influx_query(influxdb.url, database,
                                     "SELECT energy_j, gpu_s FROM job_window WHERE node = 'n2'")
        assert job_window["series"][0]["values"] == [
            [T0, pytest.approx(2 * 8 * 10 * 200.0, rel=1e-12), 160.0], [T0 + 60 * NS, 8 * 10 * 200.0, 80.0]]
        before = snapshot(influxdb, database)
        await read_back_everything(c, list(POWER_W), {T0, T0 + 60 * NS})
        assert snapshot(influxdb, database) == before


async def test_a_read_back_of_a_window_another_instance_marked_reads_whole_and_writes_none(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    """As above, but another instance marked every window (and changed nothing): the read-backs read
    the job sums and the stored points, find them all right, and write none of them."""
    async with InfluxFront(influxdb.url) as front, running_collector(
        tmp_path, toml(front.url, database, 0.3)
    ) as c:
        rollup = c.ingestor.rollup
        streams = {n: Stream(c.grpc_port) for n in POWER_W}
        marks = other_instance_marks(rollup, list(POWER_W), [T0, T0 + 60 * NS])
        write_lines(influxdb, database, marks)
        for k, t in enumerate((T0, T0 + 10 * NS, T0 + 60 * NS), start=1):  # two windows
            await send_acked(streams, k, t)
        acked = len(front.writes)
        await settle_and_close(c, streams)
        assert rollup.final_runs > 0 and rollup.final_mismatches == 0
        assert rollup.read_back_sums_skipped == 0 and rollup.node_queries > 0
        # 2 nodes x 2 windows: a node and a job_window point each, all found right, none rewritten
        assert (rollup.read_back_kept, rollup.read_back_rewrites) == (8, 0)
        assert all(measurements(w.body) <= {"rack"} for w in front.writes[acked:])  # rack settles only
        _, metrics = await scrape(c.http_port or 0)
        assert (v(metrics, "rollup_points_kept_total", kind="node"),
                v(metrics, "rollup_points_rewritten_total")) == (8, 0)
        assert assert_racks_add_up_in_node_order(influxdb, database) == 2
        (node,) = influx_query(influxdb.url, database,
                               "SELECT it_energy_kwh FROM node WHERE node = 'n1' GROUP BY node")
        assert [[t, kwh * J_PER_KWH] for t, kwh in node["series"][0]["values"]] == [
            [T0, pytest.approx(2 * 8 * 10 * 300.0, rel=1e-12)], [T0 + 60 * NS, pytest.approx(8 * 10 * 300.0)]]
        before = snapshot(influxdb, database)
        await read_back_everything(c, list(POWER_W), {T0, T0 + 60 * NS})
        assert snapshot(influxdb, database) == before


@pytest.mark.parametrize("stale", ["node", "job_window"])
async def test_a_stale_point_written_elsewhere_after_ours_is_rewritten_with_its_rack(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, stale: str
) -> None:
    """After n1's batch is acknowledged (its node and job_window points written from held state),
    "another replica" writes an incomplete n1 point in the window (half the energy), and a rack point
    summed from it, with its writer mark of the window (a replica writes n1's node points only in
    windows where it wrote n1's job points, with a mark). Held state still equals the job points' sums;
    only the stored point is wrong. The final read-back reads it and rewrites it; where it was the node
    point, the rack too (r1's settle recompute, due before the read-back, sums the stale node point)."""
    async with running_collector(tmp_path, toml(influxdb.url, database, 1.0)) as c:
        rollup = c.ingestor.rollup
        streams = {n: Stream(c.grpc_port) for n in POWER_W}
        await send_acked(streams, 1, T0)
        n1_j = 8 * 10 * 300.0
        write_lines(influxdb, database, other_instance_marks(rollup, ["n1"], [T0]))
        if stale == "node":
            write_lines(influxdb, database, [
                f"node,node=n1,rack=r1,zone=Z it_energy_kwh={n1_j / 2 / J_PER_KWH!r},gpu_count=4i {T0}",
                f"rack,rack=r1,zone=Z it_energy_kwh={(n1_j / 2 + 8 * 10 * 200.0) / J_PER_KWH!r} {T0}"])
        else:
            write_lines(influxdb, database,
                        [f"job_window,job_id=job-0,node=n1,rack=r1 energy_j={n1_j / 2!r} {T0}"])
        assert rollup.final_runs == 0  # written before the read-back (due 1 s after the batch)
        await settle_and_close(c, streams)
        node, job_window = influx_query(
            influxdb.url, database,
            "SELECT it_energy_kwh, gpu_count FROM node WHERE node = 'n1' GROUP BY node; "
            "SELECT energy_j, facility_energy_j, gpu_count, \"user\" FROM job_window WHERE node = 'n1'")
        [[t, kwh, gpus]] = node["series"][0]["values"]
        assert (t, kwh * J_PER_KWH, gpus) == (T0, pytest.approx(n1_j, rel=1e-12), 8)
        [[t, energy_j, facility_j, gpus, user]] = job_window["series"][0]["values"]
        assert (t, energy_j, gpus, user) == (T0, pytest.approx(n1_j, rel=1e-12), 8, "alice")
        assert facility_j == pytest.approx(1.5 * n1_j, rel=1e-12)
        assert assert_racks_add_up_in_node_order(influxdb, database) == 1
        assert rollup.final_mismatches == 0  # held state was right all along
        assert rollup.read_back_rewrites == 1  # the stale point, and only it
        (rack,) = influx_query(influxdb.url, database, "SELECT it_energy_kwh, gpu_count FROM rack")
        [[t, kwh, gpus]] = rack["series"][0]["values"]
        assert (t, kwh * J_PER_KWH, gpus) == (T0, pytest.approx(n1_j + 8 * 10 * 200.0, rel=1e-12), 16)
        before = snapshot(influxdb, database)
        await read_back_everything(c, list(POWER_W), {T0})
        assert snapshot(influxdb, database) == before


async def test_job_points_written_by_another_replica_after_the_ack_are_read_back_whole(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    """After n1's batch (8 GPUs x 10 s x 300 W at T0) is acknowledged, "another replica" stores a later
    sample of n1's GPU 0 in the same window (its job point, 10 s at 300 W, with the replica's writer mark),
    which this collector's held state cannot see. The final read-back finds the other mark, reads the
    sums and puts n1's node and job_window points and r1's rack point right."""
    async with running_collector(tmp_path, toml(influxdb.url, database, 1.0)) as c:
        rollup = c.ingestor.rollup
        streams = {n: Stream(c.grpc_port) for n in POWER_W}
        await send_acked(streams, 1, T0)
        co2e_g = 3000.0 * 1.5 / J_PER_KWH * 350.0  # one 10-s sample at 300 W: PUE 1.5, 350 g/kWh
        write_lines(influxdb, database, [
            *other_instance_marks(rollup, ["n1"], [T0]),
            f"job,job_id=job-0,node=n1,rack=r1,gpu=0 energy_j=3000.0,facility_energy_j=4500.0,"
            f"co2e_g={co2e_g!r},estimated_co2e_g=0.0,gpu_s=10.0,util_pct_s=600.0,idle_s=0.0,idle_energy_j=0.0,"
            f'fraction=1.0,end_ns={T0 + 20 * NS}i,user="alice" {T0 + 10 * NS}'])
        assert rollup.final_runs == 0  # written before the read-back (due 1 s after the batch)
        await settle_and_close(c, streams)
        node, job_window, rack = influx_query(
            influxdb.url, database,
            "SELECT it_energy_kwh, facility_energy_kwh, co2e_g, gpu_count, gpu_seconds FROM node "
            "WHERE node = 'n1'; "
            "SELECT energy_j, co2e_g, gpu_s, gpu_count, end_ns, \"user\" FROM job_window WHERE node = 'n1'; "
            "SELECT it_energy_kwh, gpu_count, gpu_seconds, nodes FROM rack")
        n1_j = 9 * 3000.0
        [[t, kwh, fac_kwh, co2e, gpus, gpu_s]] = node["series"][0]["values"]
        assert (t, kwh * J_PER_KWH, fac_kwh * J_PER_KWH, co2e, gpus, gpu_s) == (
            T0, pytest.approx(n1_j, rel=1e-12), pytest.approx(1.5 * n1_j, rel=1e-12),
            pytest.approx(9 * co2e_g, rel=1e-12), 8, 90.0)
        assert job_window["series"][0]["values"] == [
            [T0, pytest.approx(n1_j, rel=1e-12), pytest.approx(9 * co2e_g, rel=1e-12), 90.0, 8, T0 + 20 * NS,
             "alice"]]
        [[t, kwh, gpus, gpu_s, nodes]] = rack["series"][0]["values"]
        assert (t, kwh * J_PER_KWH, gpus, gpu_s, nodes) == (
            T0, pytest.approx(n1_j + 8 * 10 * 200.0, rel=1e-12), 16, 170.0, 2)
        assert assert_racks_add_up_in_node_order(influxdb, database) == 1
        assert (rollup.read_back_sums_skipped, rollup.final_mismatches) == (1, 1)  # n2 skipped; n1 read
        before = snapshot(influxdb, database)
        await read_back_everything(c, list(POWER_W), {T0})
        assert snapshot(influxdb, database) == before


async def test_a_restarted_collector_reads_back_whole_the_windows_its_old_instance_wrote(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    """n1 streams a batch into window T0 to a collector, which stops; a new collector (a new instance)
    gets the batch resent and two more in T0, the last one written from held state: its final read-back
    finds the old instance's mark and reads the window whole (totals exact either way here: the new
    instance read T0 after the old one stopped; the old instance's writes still in flight when it died
    are what the whole read is for)."""
    cfg = toml(influxdb.url, database, 0.5)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with running_collector(tmp_path / "a", cfg) as old:
        stream = Stream(old.grpc_port)
        assert (await stream.send(batch("n1", 1, T0))).code == 0
        await settled(old)
        await stream.close()
        old_id = old.ingestor.rollup.marks.instance_id
        assert old.ingestor.rollup.read_back_sums_skipped == 1  # only it wrote T0, so far
    async with running_collector(tmp_path / "b", cfg) as new:
        rollup = new.ingestor.rollup
        assert rollup.marks.instance_id != old_id
        stream = Stream(new.grpc_port)
        for k, t in ((1, T0), (2, T0 + 10 * NS), (3, T0 + 20 * NS)):  # the resend, then two more
            ack = await stream.send(batch("n1", k, t))
            assert ack.code == 0, ack.message
        await settled(new)
        await stream.close()
        assert rollup.final_runs >= 1
        assert rollup.read_back_sums_skipped == 0  # the old instance's mark: every read-back whole
        assert rollup.read_back_kept == 2  # n1's node and job_window points, found right
    (marks,) = influx_query(influxdb.url, database, "SELECT w FROM window_writer WHERE node = 'n1'")
    assert sorted(w for _, w in marks["series"][0]["values"]) == sorted([old_id, rollup.marks.instance_id])
    (node,) = influx_query(influxdb.url, database, "SELECT it_energy_kwh, gpu_seconds FROM node")
    assert [[t, kwh * J_PER_KWH, s] for t, kwh, s in node["series"][0]["values"]] == [
        [T0, pytest.approx(3 * 8 * 10 * 300.0, rel=1e-12), 240.0]]
