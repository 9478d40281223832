"""Real-time capacity: N simulated nodes sampled at 1 Hz → agent shippers (linger) → one collector → InfluxDB.

Each simulated node is the agent's own code: a synthetic sim source read every interval in real time,
the agent's Sampler, its SQLite Spool and its Shipper (gRPC stream, ``linger_s`` batching, acks).
To fit a small machine, many nodes run inside a few worker processes (``--workers``), each node with
its own spool and gRPC channel. One ``gridwatt-collector`` process and one InfluxDB 1.x take them.
Real agents start at different times, so their ticks and lingers are spread: the simulated nodes start
in 40 groups spread over max(interval, linger); ``--in-phase`` starts them all at once (every node
samples and ships in the same instant: a worst case).

For each N in ``--nodes`` (ascending) the run warms up, then measures ``--seconds`` (≥ 60): the ack
latency of every batch (send → ack), the samples acknowledged, and the backlog (samples spooled but
not acknowledged) at the start and end. N passes when ack p99 < 2 s and the backlog did not grow by
more than two seconds' worth of samples. The search stops at the first N that fails.

Then the raw InfluxDB rate for the same lines: the gpu and job lines the collector makes for the
largest passing N's samples over the same seconds (at least 200,000 samples; built with the
collector's own code) are POSTed straight to a fresh database.

Last line JSON: gpus_at_1hz, samples_per_s, raw_samples_per_s, ratio, influxd and collector CPU
cores per 1,000 samples/s, plus every step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from gridwatt.agent.attribution import Attributor
from gridwatt.agent.config import CollectorConnection
from gridwatt.agent.sampler import Sampler
from gridwatt.agent.shipper import Shipper
from gridwatt.agent.sources.sim.source import SimSource
from gridwatt.agent.sources.sim.trace import synthetic_trace
from gridwatt.agent.spool import Spool
from gridwatt.collector.config import CollectorConfig
from gridwatt.collector.points import prepare_batch
from gridwatt.collector.wiring import build_topology
from gridwatt.configfile import load_config
from gridwatt.demo_harness.influxdb import INFLUXD_GOGC, LocalInfluxDB
from gridwatt.demo_harness.processes import CollectorProcess, new_collector_ports, toml_str
from gridwatt.v1 import telemetry_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import count_samples, cpu_s, post_raw

ACK_P99_LIMIT_S = 2.0
#: Acks slower than this are counted per second of the minute (where in the window the tail is).
SLOW_ACK_S = 1.0
#: Simulated nodes start in this many groups spread over max(interval, linger) (see run_nodes).
PHASES = 40
#: The raw rate is measured over at least this many samples.
RAW_MIN_SAMPLES = 200_000


def say(msg: str) -> None:
    print(f"[capacity] {msg}", file=sys.stderr, flush=True)


def influxd_http_stats(url: str) -> dict[str, float]:
    """influxd's own HTTP counters (``/debug/vars``): requests, points written, time spent answering."""
    with urllib.request.urlopen(f"{url}/debug/vars", timeout=10) as resp:
        stats = json.load(resp)
    for key, value in stats.items():
        if key.startswith("httpd"):
            return {k: float(v) for k, v in value["values"].items()}
    return {}


def influxd_rates(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Per-second writes, points, queries, and the seconds per second spent in queries and writes."""
    def per_s(key: str, scale: float = 1.0) -> float:
        return round((after.get(key, 0.0) - before.get(key, 0.0)) / seconds / scale, 2)
    return {"write_req_per_s": per_s("writeReq"), "points_per_s": per_s("pointsWrittenOK"),
            "query_req_per_s": per_s("queryReq"), "query_busy_s_per_s": per_s("queryReqDurationNs", 1e9),
            "write_busy_s_per_s": per_s("writeReqDurationNs", 1e9)}


#: Collector counters reported per step (their increase inside the measured window, per second)
COLLECTOR_COUNTERS = ("gridwatt_collector_rollup_", "gridwatt_collector_influxdb_group_writes_total",
                      "gridwatt_collector_batches_deferred_total")


def collector_counters(url: str) -> dict[str, float]:
    """The collector's rollup and group-commit counters from its ``/metrics`` (name{labels} -> value)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(COLLECTOR_COUNTERS) and "_total" in line:
            name, _, value = line.rpartition(" ")
            out[name.removeprefix("gridwatt_collector_")] = float(value)
    return out


#: /debug/vars sections the trace keeps (summed over shards), and the Go runtime's GC counters
TRACE_SECTIONS = ("tsm1_engine", "tsm1_cache", "tsm1_wal", "tsm1_filestore", "httpd", "runtime")


def influxd_trace_vars(url: str) -> dict[str, float]:
    """influxd's storage, HTTP and runtime counters (``/debug/vars``), summed per section over shards."""
    with urllib.request.urlopen(f"{url}/debug/vars", timeout=10) as resp:
        stats = json.load(resp)
    out: dict[str, float] = {}
    for value in stats.values():
        if isinstance(value, dict) and value.get("name") in TRACE_SECTIONS:
            for k, v in value["values"].items():
                if isinstance(v, (int, float)):
                    key = f"{value['name']}.{k}"
                    out[key] = out.get(key, 0.0) + float(v)
    return out


class Tracer(threading.Thread):
    """``--trace``: once a second, influxd's ``/debug/vars`` counters, the time the collector takes to
    answer ``/healthz`` (its event loop's lag), both processes' CPU and the whole machine's busy CPU
    (``machine``), as JSON lines in a file."""

    def __init__(self, path: Path, influx_url: str, collector_url: str, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.path, self.influx_url, self.collector_url, self.pids = path, influx_url, collector_url, pids
        self.halt = threading.Event()

    def run(self) -> None:
        with self.path.open("a") as out:
            while not self.halt.wait(1.0 - time.time() % 1.0):
                row: dict[str, Any] = {"t": round(time.time(), 3)}
                t0 = time.perf_counter()
                try:
                    with urllib.request.urlopen(f"{self.collector_url}/healthz", timeout=10) as resp:
                        resp.read()
                    row["healthz_s"] = round(time.perf_counter() - t0, 4)
                    row["influxd"] = influxd_trace_vars(self.influx_url)
                    row["cpu_s"] = {k: cpu_s(pid) for k, pid in self.pids.items()}
                    row["cpu_s"]["machine"] = machine_busy_s()
                except (OSError, ValueError) as exc:
                    row["error"] = str(exc)
                out.write(json.dumps(row) + "\n")
                out.flush()


def machine_busy_s() -> float:
    """CPU seconds all of this machine's cores have spent busy so far (``/proc/stat``: all but idle and
    iowait), so a step can say how much of the machine something outside the benchmark took."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- worker: many simulated nodes in one process ----------------------------------------------------

async def run_nodes(args: argparse.Namespace) -> dict[str, Any]:
    """Sample, spool and ship ``args.count`` nodes in real time; report acks inside the window."""
    folder = Path(args.folder)
    conn = CollectorConnection(address=args.address, linger_s=args.linger_s, reconnect_max_s=2.0)
    t_start = time.monotonic()
    window = (t_start + args.warmup, t_start + args.warmup + args.seconds)
    latencies: list[float] = []
    ages: list[float] = []  # oldest sample's end → ack: what the data waited, linger included
    acked = [0]
    slow = [0] * 60  # acks slower than SLOW_ACK_S, by the wall clock's second of the minute
    #: epoch second -> [acks, slow acks, max ack latency, this process's max event-loop lag (--trace)]
    by_second: dict[int, list[float]] = {}

    def on_ack(latency_s: float, samples: int, age_ns: int) -> None:
        if window[0] <= time.monotonic() < window[1]:
            latencies.append(latency_s)
            if age_ns:
                ages.append(age_ns / 1e9)
            acked[0] += samples
            now_s = int(time.time())
            sec = by_second.setdefault(now_s, [0, 0, 0.0, 0.0])
            sec[0] += 1
            sec[2] = max(sec[2], latency_s)
            if latency_s > SLOW_ACK_S:
                slow[now_s % 60] += 1
                sec[1] += 1

    parts = []
    total_s = args.warmup + args.seconds + 5
    for i in range(args.first, args.first + args.count):
        node = f"{args.prefix}-{i}"
        spool = Spool(folder / f"{node}.db", 100_000)
        shipper = Shipper(node, spool, conn, ledger_report_s=3600, on_ack=on_ack)
        parts.append((node, Sampler(Attributor(f"job-{i % 7}"), idle_below_pct=5), spool, shipper))
    # Real agents start at different times, so their sampling ticks and lingers are spread out; the
    # nodes here start in PHASES groups spread over max(interval, linger) (--in-phase: all at once),
    # each group's trace starting when the group does, so that a sample ends when it is read (as a real
    # agent's does) and its age at the ack is what the data waited.
    spread_s = 0.0 if args.in_phase else max(args.interval_s, args.linger_s)
    start_ns = time.time_ns()
    nodes = []
    for i, (node, sampler, spool, shipper) in enumerate(parts, start=args.first):
        offset_ns = int(spread_s * (i % PHASES) / PHASES * 1e9)
        trace = synthetic_trace(args.gpus, start_ns + offset_ns, total_s, 350.0, 80.0)
        nodes.append((SimSource(trace, node, args.interval_s), sampler, spool, shipper))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(sh.run(stop)) for _, _, _, sh in nodes]
    groups: dict[int, list[Any]] = {}
    for i, node_parts in zip(range(args.first, args.first + args.count), nodes, strict=True):
        groups.setdefault(i % PHASES, []).append(node_parts)

    async def drive(offset_s: float, group: list[Any]) -> None:
        await asyncio.sleep(offset_s)
        next_tick = time.monotonic()
        while time.monotonic() < window[1]:
            for src, sampler, spool, shipper in group:
                samples = sampler.take(src.read())
                if samples:
                    spool.append([(s.start_ns, s.energy_j, s.SerializeToString()) for s in samples])
                    shipper.new_data.set()
            next_tick += args.interval_s
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))

    drivers = [asyncio.create_task(drive(spread_s * k / PHASES, g)) for k, g in groups.items()]

    async def watch_lag(step_s: float = 0.05) -> None:
        """The worker's own event-loop lag (a late ack may be this process's, not the collector's)."""
        while time.monotonic() < window[1]:
            t0 = time.monotonic()
            await asyncio.sleep(step_s)
            sec = by_second.setdefault(int(time.time()), [0, 0, 0.0, 0.0])
            sec[3] = max(sec[3], time.monotonic() - t0 - step_s)

    lag_task = asyncio.create_task(watch_lag()) if args.trace else None
    await asyncio.sleep(max(0.0, window[0] - time.monotonic()))
    backlog = {"start": sum(sp.pending for _, _, sp, _ in nodes)}
    cpu_at_start = time.process_time()
    await asyncio.gather(*drivers)
    if lag_task is not None:
        await lag_task
    backlog["end"] = sum(sp.pending for _, _, sp, _ in nodes)
    cpu_in_window_s = time.process_time() - cpu_at_start
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for _, _, spool, _ in nodes:
        spool.close()
    return {"latencies": latencies, "ages": ages, "acked": acked[0], "backlog_start": backlog.get("start", 0),
            "backlog_end": backlog["end"], "cpu_s": cpu_in_window_s, "slow": slow,
            "by_second": by_second}


# --- driver ---------------------------------------------------------------------------------------

def run_step(address: str, nodes: int, args: argparse.Namespace, folder: Path, prefix: str,
             pids: dict[str, int], influx_url: str, collector_url: str) -> dict[str, Any]:
    """One N: worker processes run the nodes; returns the step's figures."""
    per = -(-nodes // args.workers)
    procs = []
    for w in range(args.workers):
        first, count = w * per, min(per, nodes - w * per)
        if count <= 0:
            break
        out = folder / f"{prefix}-w{w}.json"
        cmd = [sys.executable, __file__, "--worker", "--address", address, "--prefix", prefix,
               "--first", str(first), "--count", str(count), "--gpus", str(args.gpus),
               "--interval-s", str(args.interval_s), "--linger-s", str(args.linger_s),
               "--warmup", str(args.warmup), "--seconds", str(args.seconds),
               "--folder", str(folder / prefix), "--out", str(out)]
        cmd += ["--trace", args.trace] if args.trace else []
        cmd += ["--in-phase"] if args.in_phase else []
        (folder / prefix).mkdir(parents=True, exist_ok=True)
        procs.append((subprocess.Popen(cmd), out))
    time.sleep(args.warmup)
    cpu0 = {k: cpu_s(pid) for k, pid in pids.items()}
    machine0 = machine_busy_s()
    http0 = influxd_http_stats(influx_url)
    own0 = collector_counters(collector_url)
    time.sleep(args.seconds)
    cpu1 = {k: cpu_s(pid) for k, pid in pids.items()}
    machine1 = machine_busy_s()
    http1 = influxd_http_stats(influx_url)
    own1 = collector_counters(collector_url)
    results = []
    for proc, out in procs:
        if proc.wait(timeout=args.seconds + 120) != 0:
            raise RuntimeError(f"worker failed with {proc.returncode}")
        results.append(json.loads(out.read_text()))
    latencies = [x for r in results for x in r["latencies"]]
    ages = [x for r in results for x in r["ages"]]
    acked = sum(r["acked"] for r in results)
    offered = nodes * args.gpus / args.interval_s
    growth = sum(r["backlog_end"] - r["backlog_start"] for r in results)
    step = {
        "nodes": nodes, "gpus": nodes * args.gpus, "offered_samples_per_s": offered,
        "acked_samples_per_s": round(acked / args.seconds, 1),
        "ack_p50_s": round(percentile(latencies, 0.50), 3),
        "ack_p99_s": round(percentile(latencies, 0.99), 3),
        "sample_age_at_ack_p50_s": round(percentile(ages, 0.50), 3),
        "sample_age_at_ack_p99_s": round(percentile(ages, 0.99), 3),
        "batches": len(latencies), "backlog_growth_samples": growth,
        "influxd_cores": round((cpu1["influxd"] - cpu0["influxd"]) / args.seconds, 3),
        "collector_cores": round((cpu1["collector"] - cpu0["collector"]) / args.seconds, 3),
        "loadgen_cores": round(sum(r["cpu_s"] for r in results) / args.seconds, 3),
        # the whole machine's busy cores, and what of it was none of influxd, collector and load generator
        # (another job on a shared machine: a step it disturbed says so here)
        "machine_cores": round((machine1 - machine0) / args.seconds, 3),
        "influxd": influxd_rates(http0, http1, args.seconds),
        "collector_per_s": {k: round((v - own0.get(k, 0.0)) / args.seconds, 2) for k, v in own1.items()
                            if v != own0.get(k, 0.0)},
    }
    step["other_cores"] = round(step["machine_cores"] - step["influxd_cores"] - step["collector_cores"]
                                - step["loadgen_cores"], 3)
    slow = [sum(r.get("slow", [0] * 60)[k] for r in results) for k in range(60)]
    # where the slow acks fall in the minute (windows are a minute): the 5 busiest seconds
    busiest = sorted(range(60), key=lambda k: -slow[k])[:5]
    step["slow_acks"] = {"over_s": SLOW_ACK_S, "count": sum(slow),
                         "top_seconds_of_minute": {k: slow[k] for k in busiest if slow[k]}}
    if args.trace:
        acks: dict[str, list[float]] = {}
        for r in results:
            for sec, (n, n_slow, worst, lag) in r.get("by_second", {}).items():
                a = acks.setdefault(sec, [0, 0, 0.0, 0.0])
                a[0] += n
                a[1] += n_slow
                a[2] = max(a[2], worst)
                a[3] = max(a[3], lag)
        with Path(args.trace).open("a") as trace_file:
            trace_file.write(json.dumps({"step": nodes, "acks_by_second": acks}) + "\n")
    step["ok"] = bool(latencies) and step["ack_p99_s"] < ACK_P99_LIMIT_S and growth <= 2 * offered
    return step


def raw_rate(db: LocalInfluxDB, cfg: Path, nodes: int, args: argparse.Namespace) -> tuple[float, int]:
    """Raw InfluxDB samples/s for the gpu and job lines of ``nodes`` nodes over ``args.seconds``."""
    config = load_config(cfg, CollectorConfig)
    topology = build_topology(config)
    lines: list[str] = []
    start_ns = time.time_ns() - 86_400 * 10**9
    n = 0
    for i in range(nodes):
        node = f"raw-{i}"
        placement = topology.locate(node)
        assert placement is not None
        intensity = asyncio.run(placement.intensity.series(0, 0))
        trace = synthetic_trace(args.gpus, start_ns, args.seconds, 350.0, 80.0)
        src = SimSource(trace, node, args.interval_s)
        sampler = Sampler(Attributor(f"job-{i % 7}"), idle_below_pct=5)
        rows: list[pb.GpuSample] = []
        while not src.finished:
            rows += sampler.take(src.read())
        n += len(rows)
        batch = pb.Batch(batch_id=1, node=node, gpu_samples=rows)
        lines += prepare_batch(batch, placement, intensity, 60 * 10**9,
                               gpu_fields=config.influxdb.gpu_point_fields).lines
    step = config.influxdb.write_batch_lines
    chunks = ["\n".join(lines[i : i + step]) for i in range(0, len(lines), step)]
    say(f"raw: {n} samples, {len(lines)} lines in {len(chunks)} requests")
    t0 = time.perf_counter()
    asyncio.run(post_raw(db.url, "raw", chunks, concurrency=4))
    while count_samples(db.url, "raw") < n:
        time.sleep(0.05)
    return n / (time.perf_counter() - t0), n


def rack_tables(args: argparse.Namespace) -> str:
    """``[[racks]]`` of ``--nodes-per-rack`` nodes for every step's nodes (a real cluster's racks); none
    for 0 (every node auto-registers into the default rack, which is never held)."""
    tables: list[str] = []
    if args.nodes_per_rack <= 0:
        return ""
    for k, nodes in enumerate(int(x) for x in args.nodes.split(",")):
        names = [f"s{k}-{i}" for i in range(nodes)]
        for r in range(0, nodes, args.nodes_per_rack):
            members = ", ".join(f'"{n}"' for n in names[r : r + args.nodes_per_rack])
            tables.append(f'[[racks]]\nname = "s{k}-r{r // args.nodes_per_rack}"\nzone = "Z"\npue = 1.2\n'
                          f"nodes = [{members}]\n")
    return "".join(tables)


def alert_tables(args: argparse.Namespace, folder: Path) -> str:
    """``[alerts]`` with two rules (``--alerts``), or nothing."""
    if args.alerts == "off":
        return ""
    state = toml_str(str(folder / "alerts-state.json"))
    return (f'[alerts]\nstate_file = {state}\nevaluate = "{args.alerts}"\n'
            '[[alerts.rules]]\nname = "rack-idle"\nscope = "rack"\nutil_below_pct = 10\nfor_s = 1800\n'
            '[[alerts.rules]]\nname = "job-idle"\nscope = "job"\nutil_below_pct = 5\nfor_s = 1200\n')


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", default="25,50,100,200,400", help="ascending node counts to try")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--interval-s", type=float, default=1.0)
    p.add_argument("--linger-s", type=float, default=CollectorConnection.model_fields["linger_s"].default,
                   help="the agents' [collector] linger_s (default: the agent's own default)")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--nodes-per-rack", type=int, default=8,
                   help="nodes per [[racks]] table (0: no [[racks]], all nodes in the default rack)")
    p.add_argument("--max-in-flight-batches", type=int, default=2048,
                   help="the collector's server.max_in_flight_batches (its default, 64, turns batches away "
                        "at a few hundred nodes: see README 'Sizing and scaling')")
    p.add_argument("--gpu-point-fields", choices=("all", "accounting"), default="all",
                   help="the collector's [influxdb] gpu_point_fields (the raw rate writes the same lines)")
    p.add_argument("--in-phase", action="store_true",
                   help="start every node at once, so all sample and ship in step (a worst case; real "
                        "agents start at different times)")
    p.add_argument("--alerts", choices=("off", "always", "elected"), default="off",
                   help="run the collector with a rack-idle and a job-idle rule, evaluated by this "
                        "replica (always) or through the lease election (elected: progress points per node)")
    p.add_argument("--trace", default="", help="append a per-second trace (influxd /debug/vars, the "
                   "collector's /healthz latency, CPU; acks per second) to this JSON-lines file")
    p.add_argument("--influxd-data", action="append", default=[], metavar="KEY=VALUE",
                   help='an extra [data] setting of the InfluxDB under test, VALUE in TOML '
                        '(e.g. wal-fsync-delay=\'"100ms"\'); repeatable')
    p.add_argument("--collector-influxdb", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra [influxdb] setting of the collector, VALUE in TOML (e.g. "
                        "group_commit_linger_s=0.1); repeatable")
    p.add_argument("--influxd-gogc", type=int, default=INFLUXD_GOGC,
                   help=f"influxd's GOGC (default {INFLUXD_GOGC}, the harness's; Go's own is 100)")
    # worker mode (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--address", "--prefix", "--folder", "--out"):
        p.add_argument(name, default="", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        Path(args.out).write_text(json.dumps(asyncio.run(run_nodes(args))))
        return
    if args.seconds < 60:
        say(f"note: --seconds {args.seconds} is below the 60 s the pass criterion asks for")

    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="gridwatt-capacity-"))
    spools = Path(tempfile.mkdtemp(prefix="gridwatt-capacity-spools-", dir=shm if shm.is_dir() else None))
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    data_settings = dict(kv.split("=", 1) for kv in args.influxd_data)
    with LocalInfluxDB(data_dir=folder / "influxdb", data_settings=data_settings,
                       gogc=args.influxd_gogc) as db:
        grpc_port, http_port = new_collector_ports()
        cfg = folder / "collector.toml"
        cfg.write_text(
            f'[server]\ngrpc_listen = "127.0.0.1:{grpc_port}"\nhttp_listen = "127.0.0.1:{http_port}"\n'
            f'auto_register = true\nmax_in_flight_batches = {args.max_in_flight_batches}\n'
            f'[influxdb]\nurl = {toml_str(db.url)}\ndatabase = "e2e"\n'
            f'gpu_point_fields = "{args.gpu_point_fields}"\n'
            + "".join(f"{kv.split('=', 1)[0]} = {kv.split('=', 1)[1]}\n" for kv in args.collector_influxdb)
            + '[accounting]\ndefault_zone = "Z"\ndefault_pue = 1.2\n'
            '[[zones]]\nname = "Z"\nintensity = { kind = "constant", g_per_kwh = 350.0 }\n'
            + rack_tables(args) + alert_tables(args, folder)
        )
        collector = CollectorProcess(cfg, grpc_port, http_port, log_path=folder / "collector.log").start()
        try:
            assert db.proc is not None and collector.proc is not None
            pids = {"influxd": db.proc.pid, "collector": collector.proc.pid}
            tracer = Tracer(Path(args.trace), db.url, collector.http_url, pids) if args.trace else None
            if tracer is not None:
                tracer.start()
            for k, nodes in enumerate(int(x) for x in args.nodes.split(",")):
                say(f"step {k}: {nodes} nodes x {args.gpus} GPUs at {1 / args.interval_s:g} Hz, "
                    f"linger {args.linger_s} s, {args.warmup:g} s warm-up + {args.seconds:g} s")
                step = run_step(collector.grpc_address, nodes, args, spools, f"s{k}", pids, db.url,
                                collector.http_url)
                say(json.dumps(step))
                steps.append(step)
                if not step["ok"]:
                    break
                best = step
        finally:
            if tracer is not None:
                tracer.halt.set()
                tracer.join()
            collector.stop()
        # enough lines to measure InfluxDB's rate rather than one request's latency
        per_node = args.gpus * args.seconds / args.interval_s
        raw_nodes = max(best["nodes"] if best else 0, -(-RAW_MIN_SAMPLES // int(per_node)))
        raw_per_s, _ = raw_rate(db, cfg, raw_nodes, args)
    subprocess.run(["rm", "-rf", str(spools), str(folder)], check=False)
    rate = best["acked_samples_per_s"] if best else 0.0

    def per_k(cores: float) -> float | None:
        return round(cores / (rate / 1000), 3) if rate else None

    result = {
        "gpus_at_1hz": best["gpus"] if best else 0,
        "samples_per_s": rate,
        "raw_samples_per_s": round(raw_per_s),
        "ratio": round(rate / raw_per_s, 4) if raw_per_s else 0.0,
        "influxd_cores_per_1000_samples_per_s": per_k(best["influxd_cores"]) if best else None,
        "collector_cores_per_1000_samples_per_s": per_k(best["collector_cores"]) if best else None,
        "ack_p99_s": best["ack_p99_s"] if best else None,
        "linger_s": args.linger_s,
        "gpu_point_fields": args.gpu_point_fields,
        "alerts": args.alerts,
        "in_phase": args.in_phase,
        "cpus": os.cpu_count(),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "steps": steps,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
