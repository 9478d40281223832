"""The demo: a local InfluxDB, the collector and six simulated agents in two racks replay a training job.

Everything runs as real processes talking real gRPC and HTTP on loopback; the
grid intensity is Germany's real hourly data for March 2022 (Electricity Maps).
"""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from gridwatt.configfile import packaged_data
from gridwatt.demo_harness.influxdb import INFLUXD_HINT, LocalInfluxDB
from gridwatt.demo_harness.processes import CollectorProcess, new_collector_ports, start_agent, toml_str
from gridwatt.report import fetch_json, format_alerts, format_job, format_racks
from gridwatt.timeutil import NS_PER_S, format_time_ns, parse_time_ns

JOB = "llama-7b-finetune"
EVAL_JOB = "eval-sweep-17"
START = "2022-03-07T00:00:00Z"
RACKS = {"rack-a": ["a1", "a2", "a3"], "rack-b": ["b1", "b2", "b3"]}
GPUS_PER_NODE = 8


def grid_csv() -> Path:
    """Germany's 2022 hourly intensity, shipped as package data (deploy/data/grid, gridwatt.deploy)."""
    return packaged_data("DE_2022_hourly.csv")


def write_trace(path: Path, hours: float) -> None:
    """Per-GPU power/util/job every 5 minutes for all six nodes (deterministic)."""
    start = parse_time_ns(START)
    steps = int(hours * 12)
    stall = (int(steps * 10 / 24), int(steps * 12 / 24))  # a 2-hour data-loader stall
    rows = ["time,node,gpu,power_w,util_pct,mem_util_pct,temp_c,job_id"]
    for node in [n for nodes in RACKS.values() for n in nodes]:
        for gpu in range(GPUS_PER_NODE):
            for k in range(steps + 1):
                t = format_time_ns(start + k * 300 * NS_PER_S)
                wiggle = math.sin(k / 7.0 + gpu + len(node)) * 12
                if k == steps:
                    rows.append(f"{t},{node},{gpu},0,0,0,30,")
                elif node in ("a3",):
                    on = (k // 36) % 2 == 0  # the eval sweep runs 3 h on, 3 h off
                    rows.append(f"{t},{node},{gpu},{300 + wiggle if on else 62:.1f},{70 if on else 0},"
                                f"{35 if on else 0},{60 if on else 33},{EVAL_JOB if on else ''}")
                elif node == "b3":
                    rows.append(f"{t},{node},{gpu},{58 + wiggle / 6:.1f},0,0,32,")
                elif stall[0] <= k < stall[1]:
                    rows.append(f"{t},{node},{gpu},{92 + wiggle / 3:.1f},2,1,41,{JOB}")
                else:
                    rows.append(f"{t},{node},{gpu},{395 + wiggle:.1f},{93 + wiggle / 4:.1f},58,71,{JOB}")
    path.write_text("\n".join(rows) + "\n")


def write_configs(folder: Path, influx_url: str, grpc_port: int, http_port: int, hours: float) -> Path:
    mid = format_time_ns(parse_time_ns(START) + int(hours / 2 * 3600) * NS_PER_S)
    collector = folder / "collector.toml"
    collector.write_text(
        f"""[server]
grpc_listen = "127.0.0.1:{grpc_port}"
http_listen = "127.0.0.1:{http_port}"

[influxdb]
url = {toml_str(influx_url)}
database = "gridwatt"

[accounting]
rack_resolution_s = 60

[[zones]]
name = "DE"
intensity = {{ kind = "csv", path = {toml_str(grid_csv())}, emission_factor = "lifecycle" }}

[[racks]]
name = "rack-a"
zone = "DE"
pue = 1.2
nodes = {RACKS["rack-a"]!r}

[[racks]]
name = "rack-b"
zone = "DE"
nodes = {RACKS["rack-b"]!r}
# free cooling switched on half way through the job
pue_schedule = [{{ start = "2022-01-01T00:00:00Z", pue = 1.35 }}, {{ start = {toml_str(mid)}, pue = 1.18 }}]

[alerts]
state_file = {toml_str(folder / "alerts-state.json")}

[[alerts.rules]]
name = "job-idle"
scope = "job"
util_below_pct = 10
for_s = 1800

[[alerts.rules]]
name = "cluster-idle"
scope = "cluster"
util_below_pct = 25
for_s = 1800
""".replace("'", '"')
    )
    for nodes in RACKS.values():
        for node in nodes:
            (folder / f"agent-{node}.toml").write_text(
                f"""node = "{node}"
interval_s = 60
spool_path = {toml_str(folder / f"spool-{node}.db")}

[source]
kind = "sim"
sim = {{ trace = {toml_str(folder / "trace.csv")} }}

[collector]
address = "127.0.0.1:{grpc_port}"
batch_max_samples = 2000
"""
            )
    return collector


class DemoError(Exception):
    """The demo cannot run here; the message says why and what to install."""


def _terminate_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM ends the demo like Ctrl-C: agents, collector and InfluxDB stop, the folder goes."""
    raise KeyboardInterrupt


def run_demo(hours: float = 24.0, keep: bool = False, serve: bool = False) -> int:
    if shutil.which("influxd") is None:
        raise DemoError(INFLUXD_HINT)
    folder = Path(tempfile.mkdtemp(prefix="gridwatt-demo-"))
    say = lambda msg: print(f"[demo] {msg}", flush=True)  # noqa: E731
    previous = signal.signal(signal.SIGTERM, _terminate_on_sigterm)
    agents: list[subprocess.Popen[bytes]] = []
    collector: CollectorProcess | None = None
    try:
        say(f"working in {folder} (removed at the end unless --keep)")
        with LocalInfluxDB(data_dir=folder / "influxdb") as db:
            say(f"InfluxDB 1.x running at {db.url} (data in {db.data_dir})")
            grpc_port, http_port = new_collector_ports()
            write_trace(folder / "trace.csv", hours)
            collector_cfg = write_configs(folder, db.url, grpc_port, http_port, hours)
            collector = CollectorProcess(collector_cfg, grpc_port, http_port).start()
            say(f"collector serving gRPC on {collector.grpc_address}, HTTP on {collector.http_url}")
            nodes = [n for ns in RACKS.values() for n in ns]
            layout = "; ".join(f"{rack}: {' '.join(ns)}" for rack, ns in RACKS.items())
            say(f"replaying {hours:g} h of {len(nodes)} nodes x {GPUS_PER_NODE} GPUs ({layout}) from {START}")
            t0 = time.monotonic()
            agents += [start_agent(folder / f"agent-{n}.toml", log_level="WARNING") for n in nodes]
            codes = [a.wait() for a in agents]
            elapsed = time.monotonic() - t0
            if any(codes):
                say(f"an agent failed (exit codes {codes}); see the output above")
                collector.stop()
                return 1
            samples = len(nodes) * GPUS_PER_NODE * int(hours * 60)
            say(f"all agents acknowledged: {samples} GPU samples in {elapsed:.1f} s "
                f"({samples / elapsed:.0f} samples/s)")
            print()
            for job in (JOB, EVAL_JOB, "unattributed"):
                report = fetch_json(collector.http_url, "/v1/jobs/" + urllib.parse.quote(job))
                print(format_job(report))
                print()
            print(format_racks(fetch_json(collector.http_url, "/v1/racks")))
            print()
            time.sleep(1.0)  # the alert monitor evaluates the last windows just after the final batch
            print(format_alerts(fetch_json(collector.http_url, "/v1/alerts")))
            print()
            if serve:
                say(f"web page: {collector.http_url}/ui/   (job: {collector.http_url}/ui/jobs/{JOB}; "
                    f"Prometheus metrics: {collector.http_url}/metrics)")
                say(f"serving until Ctrl-C; try: gridwatt --collector {collector.http_url} job {JOB}")
                say(f"or: curl {collector.http_url}/v1/jobs/{JOB}   (InfluxDB: {db.url}, db gridwatt)")
                try:
                    while collector.proc is not None and collector.proc.poll() is None:
                        time.sleep(1)
                except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the normal end of --serve
                    say("stopping the collector and InfluxDB")
            else:
                say("run `gridwatt demo --serve` to keep the collector and InfluxDB up and query them")
            collector.stop()
    except KeyboardInterrupt:
        say("interrupted: stopping the agents, the collector and InfluxDB")
        return 130
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.terminate()
                agent.wait()
        if collector is not None:
            collector.stop()
        signal.signal(signal.SIGTERM, previous)
        if keep:
            print(f"[demo] kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0
