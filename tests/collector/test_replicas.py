"""Two collector replicas behind which the nodes of one rack are split: rack and job series stay exact."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import start_agent, toml_str
from gridwatt.timeutil import format_time_ns
from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc
from tests.collector.helpers import running_collector
from tests.conftest import collector_toml, first_row, influx_query

pytestmark = pytest.mark.e2e  # see tests/conftest.py

T0 = 1_651_000_020 * 10**9  # a whole minute, so 30 minutes are 30 windows
NODES = ("n1", "n2", "n3", "n4")
RACK = '[[racks]]\nname = "r1"\nzone = "Z"\npue = 1.25\nnodes = ["n1", "n2", "n3", "n4"]\n'


def agent_config(folder: Path, node: str, grpc_port: int, power_w: float) -> Path:
    """A replaying agent: 4 simulated GPUs at power_w for 30 minutes, 10 s samples, small batches."""
    cfg = folder / f"agent-{node}.toml"
    cfg.write_text(
        f'node = "{node}"\ninterval_s = 10\nspool_path = {toml_str(folder / f"spool-{node}.db")}\n'
        f'[source]\nkind = "sim"\nsim = {{ gpus = 4, power_w = {power_w}, duration_s = 1800, '
        f'start = "{format_time_ns(T0)}", job_id = "job-{node}" }}\n'
        f'[collector]\naddress = "127.0.0.1:{grpc_port}"\nbatch_max_samples = 24\n'
    )
    return cfg


def run_agents(configs: list[Path]) -> list[int]:
    agents = [start_agent(c, quiet=True) for c in configs]
    return [a.wait(timeout=300) for a in agents]


async def test_two_replicas_keep_rack_and_job_series_exact(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    toml = collector_toml(influxdb.url, database, racks=RACK)
    async with running_collector(tmp_path / "a", toml) as a, running_collector(tmp_path / "b", toml) as b:
        powers = {"n1": 300.0, "n2": 310.0, "n3": 320.0, "n4": 330.0}
        ports = {"n1": a.grpc_port, "n2": b.grpc_port, "n3": a.grpc_port, "n4": b.grpc_port}
        # real agent processes, two per replica, all replaying the same 30 minutes at once
        configs = [agent_config(tmp_path, n, ports[n], powers[n]) for n in NODES]
        assert await asyncio.to_thread(run_agents, configs) == [0, 0, 0, 0]

        def sums() -> tuple[float, float, float]:
            gpu, rack = influx_query(
                influxdb.url,
                database,
                "SELECT sum(energy_j) FROM gpu; SELECT sum(it_energy_kwh), sum(gpu_count) FROM rack",
            )
            return first_row(gpu)["sum"], first_row(rack)["sum"] * 3.6e6, first_row(rack)["sum_1"]

        deadline = time.monotonic() + 30
        while True:
            gpu_j, rack_j, gpu_windows = sums()
            if rack_j == pytest.approx(gpu_j, rel=1e-12) and gpu_windows == 16 * 30:
                break
            assert time.monotonic() < deadline, f"rack series never converged: {rack_j} J vs {gpu_j} J"
            await asyncio.sleep(0.5)
        assert gpu_j == pytest.approx(sum(4 * p * 1800 for p in powers.values()), rel=1e-12)
        # every one of the 30 windows has all 16 GPUs of both replicas' nodes
        (per_window,) = influx_query(
            influxdb.url,
            database,
            "SELECT min(gpu_count), max(gpu_count), min(nodes), max(nodes), count(gpu_count) FROM rack",
        )
        assert {k: v for k, v in first_row(per_window).items() if k != "time"} == {
            "min": 16,
            "max": 16,
            "min_1": 4,
            "max_1": 4,
            "count": 30,
        }
        # each job, whichever replica stored it, is reported exactly by either replica
        for node, power in powers.items():
            for replica in (a, b):
                async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.grpc_port}") as ch:
                    report = await pb_grpc.QueryStub(ch).GetJob(pb.GetJobRequest(job_id=f"job-{node}"))
                assert report.it_energy_kwh == pytest.approx(4 * power * 1800 / 3.6e6, rel=1e-12)
                assert report.facility_energy_kwh == pytest.approx(1.25 * 4 * power * 1800 / 3.6e6, rel=1e-12)
        # the settle passes (replica_settle_s later) run, and leave the windows exact
        deadline = time.monotonic() + 30
        while a.ingestor.rollup.settle_runs < 1 or b.ingestor.rollup.settle_runs < 1:
            assert time.monotonic() < deadline, "settle recomputes never ran"
            await asyncio.sleep(0.2)
        gpu_j, rack_j, gpu_windows = sums()
        assert rack_j == pytest.approx(gpu_j, rel=1e-12) and gpu_windows == 16 * 30
