"""Helpers: agent configs aimed at an in-process collector, replays, and stored-sample counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gridwatt.agent.config import AgentConfig, CollectorConnection, SourceConfig
from gridwatt.agent.runner import RunResult, run_agent
from gridwatt.agent.sources.sim.source import SimConfig
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import toml_str
from tests.conftest import first_row, influx_query

START = "2022-04-15T05:20:00Z"
#: 2 GPUs x 300 W x 600 s in 60 s samples: 20 samples, 360 kJ.
GPUS, POWER_W, DURATION_S, INTERVAL_S = 2, 300.0, 600.0, 60.0
EXPECTED_SAMPLES = 20
EXPECTED_J = GPUS * POWER_W * DURATION_S


def agent_config(tmp_path: Path, port: int, node: str = "n1", **collector: Any) -> AgentConfig:
    return AgentConfig(
        node=node,
        interval_s=INTERVAL_S,
        spool_path=tmp_path / f"spool-{node}.db",
        source=SourceConfig(
            kind="sim",
            sim=SimConfig(gpus=GPUS, power_w=POWER_W, duration_s=DURATION_S, start=START, job_id="j"),
        ),
        collector=CollectorConnection(address=f"127.0.0.1:{port}", **collector),
    )


async def replay(config: AgentConfig) -> RunResult:
    return await run_agent(config, replay=True, progress=None)


def stored(db: LocalInfluxDB, database: str, node: str | None = None) -> tuple[int, float]:
    """(number of gpu points, their total energy_j), optionally of one node."""
    where = f" WHERE node = '{node}'" if node else ""
    (res,) = influx_query(db.url, database, f"SELECT count(energy_j), sum(energy_j) FROM gpu{where}")
    row = first_row(res)
    return int(row.get("count") or 0), float(row.get("sum") or 0.0)  # nulls: a shard being written


def tls_server_toml(pki: Any, mutual: bool) -> str:
    lines = f"tls_cert_file = {toml_str(pki.server_cert)}\ntls_key_file = {toml_str(pki.server_key)}\n"
    if mutual:
        lines += f"tls_client_ca_file = {toml_str(pki.ca)}\n"
    return lines
