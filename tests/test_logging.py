"""Structured logs: one JSON object per line from a real collector process."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import CollectorProcess, new_collector_ports
from gridwatt.logsetup import JsonFormatter
from tests.conftest import collector_toml


def test_json_formatter_keeps_extra_fields_and_exceptions() -> None:
    record = logging.LogRecord(
        "gridwatt.x", logging.WARNING, __file__, 1, "batch %d from %r", (7, "n1"), None
    )
    record.node = "n1"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    out = json.loads(JsonFormatter().format(record))
    assert (out["level"], out["logger"], out["msg"], out["node"]) == (
        "WARNING",
        "gridwatt.x",
        "batch 7 from 'n1'",
        "n1",
    )
    assert "ValueError: boom" in out["exc"] and out["ts"].endswith("+00:00")


@pytest.mark.e2e
def test_collector_logs_json_lines(
    tmp_path: Path, influxdb: LocalInfluxDB, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRIDWATT_LOG_FORMAT", "json")
    grpc_port, http_port = new_collector_ports()
    cfg = tmp_path / "collector.toml"
    cfg.write_text(collector_toml(influxdb.url, database, grpc_port, http_port))
    collector = CollectorProcess(cfg, grpc_port, http_port).start()
    collector.stop()
    lines = [line for line in collector.log_path.read_text().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert any(r["logger"] == "gridwatt.collector" and "serving gRPC" in r["msg"] for r in records)
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
