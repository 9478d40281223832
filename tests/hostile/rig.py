"""The attack-test rig: a real collector process, a real InfluxDB, and a well-behaved agent process
that streams while an attack runs. After the attack it checks that every sample of the good agent is
stored exactly, that the collector's peak RSS stayed under RSS_LIMIT_BYTES and that /healthz answered
every poll, and records the good agent's ack latencies (p50/p99) and the peak RSS.

The measurements are printed and appended, one JSON object per attack, to the file named by
``GRIDWATT_ATTACK_LOG`` (default ``<tmp>/gridwatt-attack-measurements.jsonl``). Latency is
recorded, not asserted (tests assert no timings; the machine may be shared); set
``GRIDWATT_ATTACK_MAX_P99_S`` to assert an ack p99 bound as well.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import CollectorProcess, new_collector_ports
from tests.conftest import REPO, collector_toml, first_row, influx_query
from tests.hostile.good_agent import GPUS, SAMPLE_J

GOOD = "good"
EVIL = "evil"
RACKS = f'[[racks]]\nname = "r1"\nzone = "Z"\npue = 1.2\nnodes = ["{GOOD}", "{EVIL}", "n1", "n2"]\n'
RSS_LIMIT_BYTES = 300 * 1024 * 1024


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the process's peak resident set since it started."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


@dataclass
class AttackReport:
    name: str
    good_samples: int = 0
    good_unavailable: int = 0
    good_stream_errors: int = 0
    ack_p50_s: float = 0.0
    ack_p99_s: float = 0.0
    ack_max_s: float = 0.0
    peak_rss_mb: float = 0.0
    healthz_polls: int = 0
    healthz_max_s: float = 0.0
    healthz_status: dict[str, int] = field(default_factory=dict)


class AttackRig:
    """A collector on free ports (config: ``extra_server`` lines in [server], ``extra`` sections)."""

    def __init__(self, tmp: Path, influxdb: LocalInfluxDB, database: str, extra_server: str = "",
                 extra: str = "", racks: str = RACKS) -> None:
        self.tmp = tmp
        self.influx = influxdb
        self.database = database
        grpc_port, http_port = new_collector_ports()
        cfg = tmp / "collector.toml"
        cfg.write_text(collector_toml(influxdb.url, database, grpc_port, http_port, racks=racks,
                                      extra_server=extra_server) + extra)
        self.collector = CollectorProcess(cfg, grpc_port, http_port)
        self.reports: list[AttackReport] = []

    def start(self) -> AttackRig:
        self.collector.start()
        return self

    def close(self) -> None:
        self.collector.stop(kill=True)

    @property
    def address(self) -> str:
        return self.collector.grpc_address

    @property
    def pid(self) -> int:
        assert self.collector.proc is not None
        return self.collector.proc.pid

    def query(self, q: str) -> dict[str, Any]:
        return first_row(influx_query(self.influx.url, self.database, q)[0])

    def stored(self, node: str) -> tuple[int, float]:
        row = self.query(f"SELECT count(energy_j), sum(energy_j) FROM gpu WHERE node = '{node}'")
        return int(row.get("count") or 0), float(row.get("sum") or 0.0)  # nulls: nothing stored

    @contextlib.contextmanager
    def good_agent_during(self, name: str, token: str = "") -> Iterator[AttackReport]:
        """Run the block (the attack) while the good agent streams, then check and record."""
        report = AttackReport(name)
        out = self.tmp / f"good-{name}.json"
        cmd = [sys.executable, "-m", "tests.hostile.good_agent", self.address, GOOD, str(out)]
        agent = subprocess.Popen(cmd + (["--token", token] if token else []), cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=(self.tmp / f"good-{name}.log").open("wb"))
        stop_polling = threading.Event()
        poller = threading.Thread(target=self._poll_healthz, args=(report, stop_polling), daemon=True)
        before = self.stored(GOOD)[0]
        try:
            deadline = time.monotonic() + 60
            while self.stored(GOOD)[0] < before + 2 * GPUS:  # the good agent is streaming
                assert agent.poll() is None, (self.tmp / f"good-{name}.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "good agent stored nothing in 60 s"
                time.sleep(0.1)
            poller.start()
            yield report
            time.sleep(1.0)  # a few more batches after the attack
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=120)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
            stop_polling.set()
            if poller.is_alive():
                poller.join(timeout=30)
        result = json.loads(out.read_text())
        lat = result["latencies_s"]
        report.good_samples = result["acked_samples"]
        report.good_unavailable = result["unavailable"]
        report.good_stream_errors = result["stream_errors"]
        report.ack_p50_s = round(percentile(lat, 50), 4)
        report.ack_p99_s = round(percentile(lat, 99), 4)
        report.ack_max_s = round(max(lat, default=0.0), 4)
        rss = peak_rss_bytes(self.pid)
        report.peak_rss_mb = round(rss / 2**20, 1)
        self._record(report)
        # the good agent was never refused, turned away or cut off
        assert (result["refusals"], result["unavailable"], result["stream_errors"]) == ([], 0, 0), \
            result["refusals"][:3]
        count, energy = self.stored(GOOD)
        assert count - before == result["acked_samples"] == GPUS * result["batches"]
        assert energy == (before + result["acked_samples"]) * SAMPLE_J
        assert rss < RSS_LIMIT_BYTES, f"collector peak RSS {rss / 2**20:.0f} MB"
        assert report.healthz_polls > 0 and report.healthz_status.get("timeout", 0) == 0, report
        limit = os.environ.get("GRIDWATT_ATTACK_MAX_P99_S")
        if limit:
            assert report.ack_p99_s < float(limit), report

    def open_streams(self) -> int:
        """Agent streams the collector counts as open now (its /metrics gauge)."""
        with urllib.request.urlopen(f"{self.collector.http_url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        for line in text.splitlines():
            if line.startswith("gridwatt_collector_agent_streams "):
                return int(float(line.split()[1]))
        raise AssertionError("no gridwatt_collector_agent_streams on /metrics")

    def wait_streams_at_most(self, count: int, timeout_s: float = 60.0) -> None:
        """Until the collector has let go of every stream but ``count`` (a closed stream's handler
        ends a moment after its client saw the last ack)."""
        deadline = time.monotonic() + timeout_s
        while (now := self.open_streams()) > count:
            assert time.monotonic() < deadline, f"{now} streams still open after {timeout_s:g} s"
            time.sleep(0.05)

    def _poll_healthz(self, report: AttackReport, stop: threading.Event) -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(f"{self.collector.http_url}/healthz", timeout=10) as resp:
                    status = str(resp.status)
            except urllib.error.HTTPError as exc:
                status = str(exc.code)
            except OSError:
                status = "timeout"
            report.healthz_polls += 1
            report.healthz_max_s = round(max(report.healthz_max_s, time.monotonic() - t0), 4)
            report.healthz_status[status] = report.healthz_status.get(status, 0) + 1
            stop.wait(0.5)

    def _record(self, report: AttackReport) -> None:
        line = json.dumps(report.__dict__)
        print(f"\nATTACK {line}")
        path = os.environ.get("GRIDWATT_ATTACK_LOG") or str(
            Path(tempfile.gettempdir()) / "gridwatt-attack-measurements.jsonl")
        with open(path, "a") as fh:
            fh.write(line + "\n")
        self.reports.append(report)
