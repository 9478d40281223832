"""Final read-backs rewrite only the node and job_window points stored otherwise, on a real InfluxDB.

A final read-back reads, in one request, the sums of a node's ``job`` points in its windows and then
the ``node`` and ``job_window`` points stored there, and rewrites only those that differ from what the
sums make (and the rack where a node point moved). Here: nothing differs after a plain stream (no
node or job_window write at all), and a stale point written by "another replica" after this one's
last write is put right, with its rack, though held state agrees with the sums (so a comparison with
held state instead of the store would miss it).
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.v1 import telemetry_pb2 as pb
from tests.collector.helpers import running_collector
from tests.collector.test_metrics import scrape, v
from tests.collector.test_node_state import Stream, sample, snapshot
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


def measurements(body: str) -> set[str]:
    return {line.split(",", 1)[0] for line in body.splitlines()}


async def test_a_read_back_that_finds_the_stored_points_right_writes_none(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    async with InfluxFront(influxdb.url) as front, running_collector(
        tmp_path, toml(front.url, database, 0.3)
    ) as c:
        rollup = c.ingestor.rollup
        streams = {n: Stream(c.grpc_port) for n in POWER_W}
        for k, t in enumerate((T0, T0 + 10 * NS, T0 + 60 * NS), start=1):  # two windows
            for node in POWER_W:
                ack = await streams[node].send(batch(node, k, t))
                assert ack.code == 0, ack.message
        acked = len(front.writes)
        await settled(c)
        for s in streams.values():
            await s.close()
        assert rollup.final_runs > 0 and rollup.final_mismatches == 0
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
    summed from it. Held state still equals the job points' sums; only the stored point is wrong. The
    final read-back reads it and rewrites it; where it was the node point, the rack too (r1's settle
    recompute, due before the read-back, sums the stale node point)."""
    async with running_collector(tmp_path, toml(influxdb.url, database, 1.0)) as c:
        rollup = c.ingestor.rollup
        streams = {n: Stream(c.grpc_port) for n in POWER_W}
        for node in POWER_W:
            ack = await streams[node].send(batch(node, 1, T0))
            assert ack.code == 0, ack.message
        n1_j = 8 * 10 * 300.0
        if stale == "node":
            write_lines(influxdb, database, [
                f"node,node=n1,rack=r1,zone=Z it_energy_kwh={n1_j / 2 / J_PER_KWH!r},gpu_count=4i {T0}",
                f"rack,rack=r1,zone=Z it_energy_kwh={(n1_j / 2 + 8 * 10 * 200.0) / J_PER_KWH!r} {T0}"])
        else:
            write_lines(influxdb, database,
                        [f"job_window,job_id=job-0,node=n1,rack=r1 energy_j={n1_j / 2!r} {T0}"])
        assert rollup.final_runs == 0  # written before the read-back (due 1 s after the batch)
        await settled(c)
        for s in streams.values():
            await s.close()
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
