"""``[influxdb] gpu_point_fields = "accounting"``: gpu points keep only the accounting fields.

Everything gridwatt computes (job, node, rack and job_window points, reports, the interval check)
must be the same as with "all"; only the gpu points' telemetry fields are left out, and the
``fraction`` of a job point that has its GPU whole (an absent fraction is 1.0).
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import grpc
import pytest

from gridwatt.collector.intensity.base import IntensitySeries
from gridwatt.collector.intensity.constant import ConstantIntensity
from gridwatt.collector.points import ACCOUNTING_GPU_FIELDS, prepare_batch
from gridwatt.collector.stepseries import StepSeries
from gridwatt.collector.topology import Placement
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc
from tests.collector.helpers import batches, http_get, running_collector, sim_samples
from tests.conftest import collector_toml, influx_query

H = 3600 * 10**9
T0 = 1_700_000_000 * 10**9 // H * H
_FIELD = re.compile(r'(?:^|,)([a-z0-9_]+)=("(?:[^"\\]|\\.)*"|[^,]*)')


def fields(line: str) -> tuple[str, dict[str, str], str]:
    """(series key, {field: raw value}, timestamp) of a line without spaces in its tags."""
    key, rest = line.split(" ", 1)
    body, ts = rest.rsplit(" ", 1)
    return key, dict(_FIELD.findall(body)), ts


def varied_batch() -> pb.Batch:
    """Shared and whole GPUs, unattributed time, idle time, estimated and measured hours."""
    def sample(gpu: int, start: int, energy_j: float, jobs: list[pb.JobShare]) -> pb.GpuSample:
        return pb.GpuSample(gpu_index=gpu, gpu_uuid=f"GPU-{gpu}", start_ns=start, end_ns=start + 10**9,
                            energy_j=energy_j, mean_power_w=energy_j, util_pct=37.5, mem_util_pct=12.0,
                            mem_used_bytes=2**30, temp_c=61.0, idle_s=0.25,
                            energy_method=pb.ENERGY_METHOD_COUNTER, jobs=jobs)
    whole = [pb.JobShare(job_id="j1", fraction=1.0, method=pb.ATTRIBUTION_METHOD_SLURM, user="alice")]
    shared = [pb.JobShare(job_id="j1", fraction=0.25, method=pb.ATTRIBUTION_METHOD_SLURM, user="alice"),
              pb.JobShare(job_id="j2", fraction=0.5, method=pb.ATTRIBUTION_METHOD_KUBERNETES,
                          namespace="ml", split_estimated=True)]
    return pb.Batch(node="n1", gpu_samples=[
        sample(0, T0, 300.0, whole), sample(1, T0, 123.456, shared), sample(2, T0, 50.0, []),
        sample(0, T0 + H, 301.5, whole), sample(1, T0 + H, 99.0, shared),
    ])


def test_accounting_gpu_points_keep_exactly_the_accounting_fields_with_the_same_values() -> None:
    ci = IntensitySeries(StepSeries((0, T0 + H), (100.0, 200.0), (False, True)), "csv:x.csv", "direct")
    placement = Placement("r1", "DE", StepSeries.constant(1.5), ConstantIntensity(1.0))
    batch = varied_batch()
    full = prepare_batch(batch, placement, ci, 60 * 10**9)
    lean = prepare_batch(batch, placement, ci, 60 * 10**9, gpu_fields="accounting")
    assert len(full.lines) == len(lean.lines) == 5 + 9  # 5 gpu points; 1 + 3 + 1 + 1 + 3 job points
    assert lean.first_line == full.first_line and lean.windows == full.windows
    assert lean.job_points == full.job_points
    assert (lean.it_energy_j, lean.co2e_g, lean.estimated_co2e_g) == (
        full.it_energy_j, full.co2e_g, full.estimated_co2e_g)
    gpu_lines = whole = 0
    for a, b in zip(full.lines, lean.lines, strict=True):
        if not a.startswith("gpu,"):
            # job points are the same text, but a whole GPU's leaves out fraction=1.0
            if ",fraction=1.0," in a:
                whole += 1
                assert b == a.replace(",fraction=1.0,", ",")
            else:
                assert b == a
            continue
        gpu_lines += 1
        key_a, fields_a, ts_a = fields(a)
        key_b, fields_b, ts_b = fields(b)
        assert (key_b, ts_b) == (key_a, ts_a)
        assert tuple(fields_b) == ACCOUNTING_GPU_FIELDS
        assert fields_b == {k: fields_a[k] for k in ACCOUNTING_GPU_FIELDS}
        assert len(fields_a) == 22  # the telemetry is only in the full point
    assert (gpu_lines, whole) == (5, 3)  # j1 on GPU 0 twice, and GPU 2's unattributed second
    # hand-computed: GPU 1, hour 1 (estimated 200 g/kWh): 99 J x 1.5 = 148.5 J; x 200 / 3.6e6 g
    _, last, _ = fields(lean.lines[lean.first_line[4]])
    assert (float(last["facility_energy_j"]), float(last["co2e_g"]), float(last["estimated_co2e_g"])) == (
        148.5, 148.5 * 200 / 3.6e6, 148.5 * 200 / 3.6e6)


async def _send(port: int, bs: list[pb.Batch]) -> list[tuple[int, str]]:
    out = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stream = pb_grpc.IngestStub(ch).Stream()
        for b in bs:
            await stream.write(b)
            ack = await stream.read()
            out.append((ack.code, ack.message.split(":")[0]))
        await stream.done_writing()
    return out


def _toml(url: str, database: str, gpu_fields: str) -> str:
    return collector_toml(url, database, racks='[[racks]]\nname = "r1"\nzone = "Z"\npue = 1.2\n'
                                                'nodes = ["n1", "n2"]\n',
                          extra_influxdb=f'gpu_point_fields = "{gpu_fields}"\n')


async def _run(tmp: Path, url: str, database: str, gpu_fields: str) -> dict[str, Any]:
    """Two nodes, two jobs, resends; returns what gridwatt answers and stores besides gpu points."""
    tmp.mkdir()
    bs = []
    for n, node in enumerate(("n1", "n2")):
        samples = sim_samples(node, 4, T0, 600, 300.0 + 50 * n, 10.0, job_id=f"job-{n + 1}", util_pct=60.0)
        bs += batches(node, samples, 37, first_id=100 * n)
    async with running_collector(tmp, _toml(url, database, gpu_fields)) as c:
        acks = await asyncio.gather(*(_send(c.grpc_port, [b for b in bs if b.node == node])
                                      for node in ("n1", "n2")))
        assert [code for a in acks for code, _ in a] == [0] * len(bs)
        # an exact resend is stored again; a rewrite of one stored second is refused
        assert await _send(c.grpc_port, bs[3:5]) == [(0, "")] * 2
        changed = pb.Batch()
        changed.CopyFrom(bs[0])
        changed.batch_id = 999
        changed.gpu_samples[0].energy_j += 1.0
        assert await _send(c.grpc_port, [changed]) == [(3, "interval_conflict")]
        await c.ingestor.rollup.close()
        reports = {}
        for job in ("job-1", "job-2"):
            status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{c.http_port}/v1/jobs/{job}")
            assert status == 200, body
            reports[job] = json.loads(body)
        status, racks = await asyncio.to_thread(http_get, f"http://127.0.0.1:{c.http_port}/v1/racks")
        assert status == 200, racks
    stored = influx_query(url, database, "SELECT * FROM node; SELECT * FROM rack; SELECT * FROM job_window; "
                                         "SELECT * FROM job; SHOW FIELD KEYS FROM gpu; "
                                         "SELECT sum(energy_j), sum(co2e_g), count(digest) FROM gpu")
    return {"reports": reports, "racks": json.loads(racks), "stored": stored}


async def test_everything_but_gpu_telemetry_is_the_same_end_to_end(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    full = await _run(tmp_path / "all", influxdb.url, database + "_all", "all")
    lean = await _run(tmp_path / "acc", influxdb.url, database + "_acc", "accounting")
    assert lean["reports"] == full["reports"]
    assert lean["reports"]["job-1"]["gpu_hours"] == pytest.approx(4 * 600 / 3600, rel=1e-12)
    assert lean["racks"] == full["racks"]
    *same_a, job_a, keys_a, gpu_a = full["stored"]
    *same_b, job_b, keys_b, gpu_b = lean["stored"]
    assert same_b == same_a  # node, rack and job_window points, bit for bit
    # job points: bit for bit, but those of a whole GPU have no fraction (1.0 with "all")
    def rows(res: dict[str, Any]) -> list[dict[str, Any]]:
        return [dict(zip(series["columns"], row, strict=True)) for series in res["series"]
                for row in series["values"]]

    rows_a, rows_b = rows(job_a), rows(job_b)
    assert [r.pop("fraction") for r in rows_a] == [1.0] * len(rows_a)  # these jobs have their GPUs whole
    assert "fraction" not in {k for r in rows_b for k in r}  # no job point of the database has one
    assert rows_b == rows_a
    assert gpu_b == gpu_a  # and the gpu points' accounting: 2 nodes x 4 GPUs x 60 points
    assert gpu_b["series"][0]["values"][0][3] == 480
    assert sorted(v[0] for v in keys_b["series"][0]["values"]) == sorted(ACCOUNTING_GPU_FIELDS)
    assert len(keys_a["series"][0]["values"]) == 22
