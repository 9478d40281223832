"""Real servers for the views tests: a demo replay (InfluxDB, collector, agents) and Prometheus."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from gridwatt.demo import RACKS, write_configs, write_trace
from gridwatt.demo_harness.influxdb import LocalInfluxDB, free_port, wait_until_answering
from gridwatt.demo_harness.processes import CollectorProcess, new_collector_ports, start_agent

PROMETHEUS = "/usr/bin/prometheus"
REPLAY_HOURS = 8.0


class Replay:
    """The demo's replay (6 nodes x 8 GPUs, two racks, real DE intensity) into its own database."""

    def __init__(self, influx: LocalInfluxDB, folder: Path, database: str, hours: float = REPLAY_HOURS):
        self.influx = influx
        self.folder = folder
        self.database = database
        self.hours = hours
        self.collector: CollectorProcess | None = None

    @property
    def url(self) -> str:
        assert self.collector is not None
        return self.collector.http_url

    def start(self) -> Replay:
        grpc_port, http_port = new_collector_ports()
        write_trace(self.folder / "trace.csv", self.hours)
        cfg = write_configs(self.folder, self.influx.url, grpc_port, http_port, self.hours)
        cfg.write_text(cfg.read_text().replace('database = "gridwatt"', f'database = "{self.database}"'))
        self.collector = CollectorProcess(cfg, grpc_port, http_port).start()
        nodes = [n for ns in RACKS.values() for n in ns]
        agents = [start_agent(self.folder / f"agent-{n}.toml", quiet=True) for n in nodes]
        codes = [a.wait(timeout=300) for a in agents]
        assert codes == [0] * len(nodes), codes
        self.samples = len(nodes) * 8 * int(self.hours * 60)
        # the alert monitor evaluates the last windows just after the final batch
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.get("/v1/alerts")["alerts"]:
            time.sleep(0.2)
        return self

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            return json.load(resp)

    def stop(self) -> None:
        if self.collector is not None:
            self.collector.stop()


class LocalPrometheus:
    """Debian's Prometheus scraping one target every second, data in a temporary folder."""

    def __init__(self, folder: Path, target: str) -> None:
        self.folder = folder
        self.target = target
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalPrometheus:
        self.folder.mkdir(parents=True, exist_ok=True)
        cfg = self.folder / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: gridwatt-collector\n"
            f"    static_configs:\n      - targets: ['{self.target}']\n"
        )
        log = (self.folder / "prometheus.log").open("ab")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={self.folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        if not wait_until_answering(self.proc, f"{self.url}/-/ready", 200, 60, "prometheus"):
            self.stop()
            raise RuntimeError("prometheus did not become ready in 60 s")
        return self

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query; the result vector."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        params = {"query": promql, "start": start, "end": end, "step": step}
        url = f"{self.url}/api/v1/query_range?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(self, promql: str, value: float, timeout_s: float = 30.0) -> None:
        """Until the (single) result of ``promql`` equals ``value`` (a scrape after the replay)."""
        deadline = time.monotonic() + timeout_s
        seen: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            seen = self.query(promql)
            if seen and float(seen[0]["value"][1]) == value:
                return
            time.sleep(0.25)
        raise AssertionError(f"{promql} never reached {value}: {seen}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def have_prometheus() -> bool:
    return Path(PROMETHEUS).exists() and shutil.which("promtool") is not None
