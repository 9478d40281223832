"""Collector CPU per sample on the real-time path, stage by stage, in one process (no I/O).

Real-time-shaped batches: one node of 8 GPUs sampled at 1 Hz, shipped after a 2 s agent linger,
so 16 GPU samples per batch, 1-3 jobs per GPU (Slurm attribution with user/account/partition,
a shared GPU with an unattributed rest, an idle GPU), 2 host samples and the spool ledger. The
zone's intensity is Electricity Maps' hourly CSV for Germany (the shipped deploy data), the
rack's PUE a schedule with steps.

Each stage is timed on its own over the same batches (CPU time of this process,
``time.process_time``, so other processes on the machine count less; best of
``--repeat`` rounds) and reported in microseconds per GPU sample:

* ``parse``      ``pb.Batch.FromString`` of the bytes the agent sends
* ``validate``   ``validate_batch`` + ``validate_host_samples``
* ``locate``     ``Topology.locate``
* ``bounds``     the job-series budget (job ids, new jobs, check, admit)
* ``lookups``    ``min``/``max`` of the batch, intensity provider and PUE series lookups
* ``prepare``    ``prepare_batch``: accounting and gpu/job line rendering
* ``side``       ``LedgerBook.lines`` + ``host_lines``
* ``live``       ``LiveAccounts.observe`` (the /metrics live view)
* ``handle``     the whole ``Ingestor.handle`` (all of the above but parse, plus IngestStats and
  the node lock) with ``rack_windows`` off and a store that keeps the lines in memory (the
  InfluxDB write path and the rack rollups are measured by benchmarks/capacity.py)
* ``held``       ``Ingestor.handle`` as the collector runs it by default: rack windows on (``RackRollup``
  with held node state), the interval check on, against a store that keeps lines in memory and
  answers every InfluxQL read empty (so each node's state is filled once, then held); the
  rollups' own reads and read-backs (none here) are measured by benchmarks/capacity.py
* ``grpc``       CPU time of this process while a child process streams the same batches over
  real gRPC (one stream per node, as agents do) to ``IngestService`` on that ``Ingestor``: gRPC
  receive, parse and ``handle``, and the Acks (``--no-grpc`` skips it)

``--profile N`` also prints the top N cProfile entries of ``Ingestor.handle`` (by own time).
The gRPC stage includes what grpcio does in this process (HTTP/2, the aio server, the Acks).

The figures are CPU time on a shared machine (caches and clock still vary): compare runs made
in the same session. The last line is JSON: µs per sample for each stage, ``total`` (``parse`` +
``handle``) and ``grpc_overhead`` (``grpc`` - ``handle``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import grpc

from gridwatt.collector.bounds import JobSeriesBudget
from gridwatt.collector.config import CollectorConfig
from gridwatt.collector.ingest import Ingestor, IngestService, NodeBounds
from gridwatt.collector.ledger import LedgerBook
from gridwatt.collector.live_metrics import LiveAccounts
from gridwatt.collector.node_state import HeldNodes
from gridwatt.collector.points import UNATTRIBUTED, host_lines, prepare_batch
from gridwatt.collector.rollup import RackRollup
from gridwatt.collector.store import WriteResult
from gridwatt.collector.validation import Limits, validate_batch, validate_host_samples
from gridwatt.collector.wiring import build_topology
from gridwatt.configfile import load_config
from gridwatt.v1 import telemetry_pb2 as pb

REPO = Path(__file__).resolve().parent.parent
DE_CSV = REPO / "deploy" / "data" / "grid" / "DE_2022_hourly.csv"
START_NS = 1_656_633_600 * 10**9  # 2022-07-01T00:00:00Z
NS = 10**9
GPUS = 8


def say(msg: str) -> None:
    print(f"[collector_cpu] {msg}", file=sys.stderr, flush=True)


def make_config(tmp: Path, nodes: int) -> CollectorConfig:
    names = ", ".join(f'"node-{i:04d}"' for i in range(nodes))
    (tmp / "collector.toml").write_text(
        '[server]\ngrpc_listen = "127.0.0.1:0"\nhttp_listen = "127.0.0.1:0"\n\n'
        '[influxdb]\nurl = "http://127.0.0.1:9"\ndatabase = "bench"\n\n'
        f'[[zones]]\nname = "DE"\nintensity = {{ kind = "csv", path = "{DE_CSV}" }}\n\n'
        f'[[racks]]\nname = "rack-a1"\nzone = "DE"\nnodes = [{names}]\n'
        'pue_schedule = [{ start = "2022-01-01T00:00:00Z", pue = 1.25 },'
        ' { start = "2022-07-01T00:00:30.5Z", pue = 1.31 }, { start = "2022-07-01T06:00:00Z", pue = 1.2 }]\n'
    )
    return load_config(tmp / "collector.toml", CollectorConfig)


def _share(job_id: str, fraction: float, user: str, account: str) -> pb.JobShare:
    return pb.JobShare(job_id=job_id, fraction=fraction, method=pb.ATTRIBUTION_METHOD_SLURM, user=user,
                       account=account, partition="gpu", job_name=f"train-{job_id}")


def gpu_jobs(node: int, gpu: int) -> list[pb.JobShare]:
    """GPUs 0-3: one job; 4-5: a second; 6: shared by two jobs with an unattributed rest; 7: idle."""
    base = 4_000_000 + node * 3
    if gpu < 4:
        return [_share(str(base), 1.0, "alice", "proj-a")]
    if gpu < 6:
        return [_share(str(base + 1), 1.0, "bob", "proj-b")]
    if gpu == 6:
        return [_share(str(base + 1), 0.5, "bob", "proj-b"), _share(str(base + 2), 0.3, "carol", "proj-c")]
    return []


def make_batch(node: int, seq: int, linger_s: int) -> pb.Batch:
    """One batch: ``linger_s`` 1-second intervals of 8 GPUs, host samples and the ledger."""
    samples: list[pb.GpuSample] = []
    hosts: list[pb.HostSample] = []
    for k in range(linger_s):
        t0 = START_NS + (seq * linger_s + k) * NS + node * 1_000_003
        for gpu in range(GPUS):
            idle = gpu == 7
            power = 61.0 + gpu if idle else 300.0 + 17.3 * gpu + 0.731 * ((seq * 7 + k) % 11)
            samples.append(pb.GpuSample(
                gpu_index=gpu, gpu_uuid=f"GPU-{node:04d}{gpu:02d}-5a1c-4e2b-9f3d-0123456789ab",
                gpu_name="NVIDIA H100 80GB HBM3", start_ns=t0, end_ns=t0 + NS, energy_j=power * 1.0,
                mean_power_w=power, util_pct=0.0 if idle else 87.0 + gpu,
                mem_util_pct=0.0 if idle else 41.5, mem_used_bytes=0 if idle else 61_234_567_168 + gpu,
                temp_c=38.0 if idle else 64.0 + gpu * 0.5,
                idle_s=1.0 if idle else 0.0, energy_method=pb.ENERGY_METHOD_COUNTER,
                jobs=gpu_jobs(node, gpu), power_limit_w=700.0, sm_clock_mhz=1980,
            ))
        hosts.append(pb.HostSample(start_ns=t0, end_ns=t0 + NS, cpu_util_pct=37.5,
                                   mem_used_bytes=412_000_000_000, mem_total_bytes=2_000_000_000_000,
                                   cpu_energy_j=410.2, has_cpu_energy=True))
    n = (seq + 1) * linger_s * GPUS
    ledger = pb.SpoolLedger(sampled=n + 16, acknowledged=n, pending=16,
                            at_ns=START_NS + (seq + 1) * linger_s * NS)
    return pb.Batch(batch_id=seq + 1, node=f"node-{node:04d}", agent_version="0.9.0", gpu_samples=samples,
                    host_samples=hosts, ledger=ledger)


class MemoryStore:
    """Keeps written lines in memory (what ``Ingestor`` calls of InfluxStore, without InfluxDB)."""

    serving = True
    health_reason = ""
    #: ``[influxdb] gpu_point_fields`` (``--gpu-point-fields``)
    gpu_point_fields = "all"

    def __init__(self) -> None:
        self.lines = 0
        self.config = SimpleNamespace(gpu_point_fields=MemoryStore.gpu_point_fields)

    async def write_lines(self, lines: list[str]) -> WriteResult:
        self.lines += len(lines)
        return WriteResult()

    def retry_after_s(self) -> float:
        return 1.0


class EmptyQueryStore(MemoryStore):
    """A MemoryStore that answers every InfluxQL statement with no rows (nothing stored before)."""

    def measurement(self, name: str) -> str:
        return name

    async def query(self, q: str, method: str = "GET") -> list[dict[str, object]]:
        return [{} for _ in q.split(";")]

    async def note_unreachable(self, reason: str) -> None:
        raise AssertionError(reason)


class NoRollup:
    """Rack windows are off in this benchmark; ``prepare_batch`` still takes their resolution, and
    a new stream drops its node's held state (none is held with rack windows off)."""

    resolution_ns = 60 * NS

    def __init__(self) -> None:
        self.held = HeldNodes(MemoryStore(), self.resolution_ns)  # type: ignore[arg-type]
        self.store = MemoryStore()

    async def write_marked(self, node_windows: object, lines: list[str]) -> WriteResult:
        """No writer marks without rack windows: the lines alone."""
        return await self.store.write_lines(lines)


CLIENT = """
import asyncio, sys
import grpc
from gridwatt.v1 import telemetry_pb2 as pb

async def node_stream(channel, raws):
    call = channel.stream_stream("/gridwatt.v1.Ingest/Stream", request_serializer=None,
                                 response_deserializer=pb.Ack.FromString)()
    for raw in raws:
        await call.write(raw)
        ack = await call.read()
        assert ack.code == 0, ack.message
    await call.done_writing()

async def main():
    port, nodes = int(sys.argv[1]), int(sys.argv[2])
    raws = [bytes.fromhex(line) for line in sys.stdin.read().split()]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await channel.channel_ready()
        print("ready", flush=True)
        sys.stdin.close()
        await asyncio.gather(*(node_stream(channel, raws[k::nodes]) for k in range(nodes)))

asyncio.run(main())
"""


async def grpc_cpu_s(ingestor: Ingestor, raws: list[bytes], nodes: int) -> float:
    """This process's CPU seconds while a child streams ``raws`` (node-major, interleaved) to it."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((IngestService(ingestor).handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, str(port), str(nodes),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("\n".join(r.hex() for r in raws).encode())
    child.stdin.close()
    await child.stdout.readline()  # connected
    t0 = time.process_time()
    rc = await child.wait()
    cpu_s = time.process_time() - t0
    await server.stop(0)
    if rc != 0:
        raise SystemExit(f"gRPC client exited {rc}")
    return cpu_s


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--batches-per-node", type=int, default=20)
    ap.add_argument("--linger-s", type=int, default=2, help="1-second intervals per batch (16 samples at 2)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-grpc", action="store_true", help="skip the gRPC stage")
    ap.add_argument("--gpu-point-fields", choices=("all", "accounting"), default="all",
                    help="[influxdb] gpu_point_fields of the collector (prepare and the handle stages)")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="print the top N cProfile entries")
    args = ap.parse_args()
    MemoryStore.gpu_point_fields = args.gpu_point_fields

    with tempfile.TemporaryDirectory() as tmp_name:
        cfg = make_config(Path(tmp_name), args.nodes)
    topology = build_topology(cfg)
    limits = Limits(max_future_ns=300 * NS, max_power_w=2000.0, max_interval_ns=3600 * NS,
                    min_time_ns=START_NS - 86400 * NS)
    batches = [make_batch(node, seq, args.linger_s)
               for seq in range(args.batches_per_node) for node in range(args.nodes)]
    raws = [b.SerializeToString() for b in batches]
    samples = sum(len(b.gpu_samples) for b in batches)
    now_ns = START_NS + 10 * 86400 * NS
    say(f"{len(batches)} batches, {samples} GPU samples ({samples // len(batches)} per batch), "
        f"{args.repeat} rounds per stage")
    resolution_ns = 60 * NS
    loop = asyncio.new_event_loop()

    placements = [topology.locate(b.node) for b in batches]

    async def lookups_all() -> list[tuple[object, object]]:
        out = []
        for b, p in zip(batches, placements, strict=True):
            assert p is not None
            lo = min(s.start_ns for s in b.gpu_samples)
            hi = max(s.end_ns for s in b.gpu_samples)
            out.append((await p.intensity.series(lo, hi), await p.pue_series(lo, hi)))
        return out

    looked = loop.run_until_complete(lookups_all())

    def parse() -> None:
        for raw in raws:
            pb.Batch.FromString(raw)

    def validate() -> None:
        for b in batches:
            validate_batch(b, limits, now_ns)
            validate_host_samples(b, limits, now_ns)

    def locate() -> None:
        for b in batches:
            topology.locate(b.node)

    def bounds() -> None:
        budget = JobSeriesBudget(1_000_000)
        for b in batches:
            job_ids = [j.job_id for s in b.gpu_samples for j in s.jobs if j.job_id != UNATTRIBUTED]
            new = budget.new_jobs(b.node, job_ids)
            budget.check(b.node, new)
            budget.admit(b.node, job_ids, new)

    def lookups() -> None:
        loop.run_until_complete(lookups_all())

    def prepare() -> None:
        for b, p, (ci, pue) in zip(batches, placements, looked, strict=True):
            prepare_batch(b, p, ci, resolution_ns, pue, args.gpu_point_fields)  # type: ignore[arg-type]

    firsts = [prepare_batch(b, p, ci, resolution_ns, pue).first_line  # type: ignore[arg-type]
              for b, p, (ci, pue) in zip(batches, placements, looked, strict=True)]

    def side() -> None:
        book = LedgerBook()
        for b, p in zip(batches, placements, strict=True):
            assert p is not None
            book.lines(b, p.rack)
            host_lines(b, p)

    def live() -> None:
        accounts = LiveAccounts()
        for b, p, (ci, pue), first in zip(batches, placements, looked, firsts, strict=True):
            accounts.observe(b, p, ci, pue, first, {})  # type: ignore[arg-type]

    def new_ingestor() -> Ingestor:
        ing = Ingestor(topology, MemoryStore(), NoRollup(), limits, rack_windows=False,  # type: ignore[arg-type]
                       bounds=NodeBounds(jobs=JobSeriesBudget(1_000_000)))
        ing.on_accounted = LiveAccounts().observe
        return ing

    async def handle_all(ing: Ingestor) -> None:
        for b in batches:
            ack = await ing.handle(b)
            if ack.code != 0:
                raise SystemExit(f"batch {b.batch_id} of {b.node} not stored: {ack.message}")

    def handle() -> None:
        loop.run_until_complete(handle_all(new_ingestor()))

    async def held_all() -> None:
        store = EmptyQueryStore()
        rollup = RackRollup(store, 60)  # type: ignore[arg-type]
        ing = Ingestor(topology, store, rollup, limits, rack_windows=True,  # type: ignore[arg-type]
                       bounds=NodeBounds(jobs=JobSeriesBudget(1_000_000), check_intervals=True))
        ing.on_accounted = LiveAccounts().observe
        await handle_all(ing)
        await rollup.close()

    def held() -> None:
        loop.run_until_complete(held_all())

    # validation's future check uses the wall clock inside Ingestor: the samples are in 2022
    stages: dict[str, Callable[[], None]] = {
        "parse": parse, "validate": validate, "locate": locate, "bounds": bounds, "lookups": lookups,
        "prepare": prepare, "side": side, "live": live, "handle": handle, "held": held,
    }
    us: dict[str, float] = {}
    for name, fn in stages.items():
        fn()  # warm up
        us[name] = best_of(args.repeat, fn) / samples * 1e6
        say(f"{name:>9}: {us[name]:7.2f} µs per sample")
    if not args.no_grpc:
        best = min(loop.run_until_complete(grpc_cpu_s(new_ingestor(), raws, args.nodes))
                   for _ in range(max(2, args.repeat // 2)))
        us["grpc"] = best / samples * 1e6
        us["grpc_overhead"] = us["grpc"] - us["handle"]
        say(f"{'grpc':>9}: {us['grpc']:7.2f} µs per sample (server process CPU; "
            f"{us['grpc_overhead']:.2f} above handle)")
    us["total"] = us["parse"] + us["handle"]
    say(f"{'total':>9}: {us['total']:7.2f} µs per sample (parse + handle) -> "
        f"{1e6 / us['total']:,.0f} samples/s per core")
    if args.profile:
        prof = cProfile.Profile()
        ing = new_ingestor()
        prof.enable()
        loop.run_until_complete(handle_all(ing))
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.profile)
        print(out.getvalue(), file=sys.stderr)
    loop.close()
    print(json.dumps({"samples_per_batch": samples // len(batches), "batches": len(batches),
                      "us_per_sample": {k: round(v, 3) for k, v in us.items()}}))


if __name__ == "__main__":
    main()
