"""Fuzz a running collector: structure-aware batches (gridwatt/fuzzgen.py), raw bytes and queries.

Starts a throwaway InfluxDB 1.x and a real ``gridwatt-collector`` process, then drives ``--inputs``
generated inputs into it from ``--workers`` concurrent gRPC clients:

* batches with one field pushed to an edge (NaN, ±inf, 2^63, bad names, too many shares, ...): must be
  refused ``INVALID_ARGUMENT`` with a named reason, nothing of them stored;
* well-formed batches (each worker its own node and time, never overlapping): must be stored, ``OK``;
* random bytes on ``Ingest/Write``: ``INVALID_ARGUMENT`` (or any named answer), never a crash;
* batches of a node in no rack: ``UNAVAILABLE`` ``unknown_node``;
* ``Query/GetJob`` with generated ids (valid, invalid, 2-byte unicode, too long): ``NOT_FOUND``,
  ``OK`` or ``INVALID_ARGUMENT``;
* HTTP ``GET /v1/jobs/<id>`` with the same ids: 200, 400 or 404.

At the end InfluxDB must hold exactly the energy of the batches answered OK, per node. Reports
crashes (the collector process died, or an answer UNKNOWN/INTERNAL: must be 0), answers that were not
what the input called for, peak RSS (VmHWM) and the rate. Prints progress; the last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import aiohttp
import grpc

from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.demo_harness.processes import CollectorProcess, new_collector_ports, toml_str
from gridwatt.fuzzgen import NS, random_batch, random_bytes, random_query_id
from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc

KNOWN_REFUSALS = ("field ", "too_many_", "interval_conflict", "batch has no samples", "gpu_samples[",
                  "malformed batch", "stream_node_changed")


def say(msg: str) -> None:
    print(f"[fuzz] {msg}", file=sys.stderr, flush=True)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Tally:
    def __init__(self) -> None:
        self.inputs = 0
        self.by_kind: collections.Counter[str] = collections.Counter()
        self.answers: collections.Counter[str] = collections.Counter()
        self.unexpected: list[str] = []
        self.crashes = 0
        self.stored_j: dict[str, float] = collections.defaultdict(float)

    def bad(self, what: str) -> None:
        if len(self.unexpected) < 20:
            self.unexpected.append(what[:300])
        self.answers["unexpected"] += 1


async def worker(w: int, address: str, http_url: str, seed: int, quota: int, tally: Tally,
                 start_ns: int, session: aiohttp.ClientSession) -> None:
    rng = random.Random(seed * 1000 + w)
    node = f"fz{w}"
    cursor = start_ns
    batch_id = 0
    async with grpc.aio.insecure_channel(address) as channel:
        ingest = pb_grpc.IngestStub(channel)
        query = pb_grpc.QueryStub(channel)
        raw_write = channel.unary_unary("/gridwatt.v1.Ingest/Write")
        for _ in range(quota):
            batch_id += 1
            r = rng.random()
            try:
                if r < 0.70:  # a spoiled or a good batch of this worker's node
                    gen = random_batch(rng, node, batch_id, cursor, bad_share=0.97)
                    kind = "batch_" + gen.expect
                    if gen.expect == "ok":
                        cursor += 120 * NS
                    try:
                        await ingest.Write(gen.batch, timeout=120)
                        answer = "OK"
                    except grpc.aio.AioRpcError as exc:
                        answer, details = exc.code().name, exc.details() or ""
                    if gen.expect == "ok":
                        if answer == "OK":
                            tally.stored_j[node] += gen.energy_j
                        else:
                            tally.bad(f"good batch answered {answer}: {details}")
                    elif answer == "OK":  # stored although it should not have been: still counted
                        tally.stored_j[node] += sum(s.energy_j for s in gen.batch.gpu_samples)
                        cursor += 120 * NS
                        tally.bad(f"spoiled batch stored: {gen.batch}")
                    elif answer != "INVALID_ARGUMENT" or not details.startswith(KNOWN_REFUSALS):
                        tally.bad(f"spoiled batch answered {answer}: {details}")
                elif r < 0.85:  # random bytes
                    kind = "raw_bytes"
                    try:
                        await raw_write(random_bytes(rng, 96), timeout=60)
                        answer = "OK"
                    except grpc.aio.AioRpcError as exc:
                        answer = exc.code().name
                    if answer not in ("OK", "INVALID_ARGUMENT", "UNAVAILABLE"):
                        tally.bad(f"raw bytes answered {answer}")
                elif r < 0.88:  # a node in no rack
                    kind = "unknown_node"
                    gen = random_batch(rng, f"ghost{w}", batch_id, cursor, bad_share=0.0)
                    try:
                        await ingest.Write(gen.batch, timeout=60)
                        answer = "OK"
                    except grpc.aio.AioRpcError as exc:
                        answer, details = exc.code().name, exc.details() or ""
                    if answer != "UNAVAILABLE" or not details.startswith("unknown_node"):
                        tally.bad(f"unknown node answered {answer}")
                elif r < 0.98:  # gRPC query
                    kind = "getjob"
                    try:
                        await query.GetJob(pb.GetJobRequest(job_id=random_query_id(rng)), timeout=60)
                        answer = "OK"
                    except grpc.aio.AioRpcError as exc:
                        answer = exc.code().name
                    if answer not in ("OK", "NOT_FOUND", "INVALID_ARGUMENT"):
                        tally.bad(f"GetJob answered {answer}")
                else:  # HTTP query
                    kind = "http_job"
                    job = urllib.parse.quote(random_query_id(rng), safe="")
                    async with session.get(f"{http_url}/v1/jobs/{job}") as resp:
                        await resp.read()
                        answer = f"HTTP_{resp.status}"
                    if resp.status not in (200, 400, 404):
                        tally.bad(f"HTTP job answered {resp.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                kind, answer = "transport", type(exc).__name__
                tally.bad(f"transport error {exc!r}")
            if answer in ("UNKNOWN", "INTERNAL"):
                tally.crashes += 1
            tally.inputs += 1
            tally.by_kind[kind] += 1
            tally.answers[answer] += 1


async def run(args: argparse.Namespace, collector: CollectorProcess,
              influx: LocalInfluxDB) -> dict[str, object]:
    tally = Tally()
    per = args.inputs // args.workers
    # each worker is its own node, so their sample times may coincide; a worker's cursor moves 120 s per
    # good batch (about 2 % of its inputs), so start far enough back never to reach the future bound
    span_ns = int(per * 0.05 * 120) * NS + 86400 * NS
    start_ns = (time.time_ns() - span_ns) // NS * NS
    t0 = time.monotonic()

    async def progress() -> None:
        while True:
            await asyncio.sleep(10)
            dt = time.monotonic() - t0
            say(f"{tally.inputs} inputs in {dt:.0f} s ({tally.inputs / dt:.0f}/s); unexpected "
                f"{tally.answers['unexpected']}, crashes {tally.crashes}, peak RSS "
                f"{peak_rss_mb(collector.proc.pid):.0f} MB")  # type: ignore[union-attr]

    reporter = asyncio.create_task(progress())
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(
            worker(w, collector.grpc_address, collector.http_url, args.seed, per, tally, start_ns, session)
            for w in range(args.workers)))
    reporter.cancel()
    elapsed = time.monotonic() - t0
    alive = collector.proc is not None and collector.proc.poll() is None
    rss = peak_rss_mb(collector.proc.pid) if alive else -1.0  # type: ignore[union-attr]
    # stored exactly: InfluxDB holds the energy of the OK batches, per node, and nothing else
    mismatched = []
    q = "SELECT sum(energy_j) FROM gpu GROUP BY node"
    params = urllib.parse.urlencode({"db": args.database, "q": q})
    async with aiohttp.ClientSession() as s, s.get(f"{influx.url}/query?{params}") as resp:
        body = await resp.json()
    stored = {ser["tags"]["node"]: ser["values"][0][1] for ser in body["results"][0].get("series", [])}
    for node in set(stored) | set(tally.stored_j):
        want, got = tally.stored_j.get(node, 0.0), stored.get(node, 0.0)
        if abs(want - got) > 1e-6 * max(1.0, abs(want)):
            mismatched.append(f"{node}: stored {got} J, acknowledged {want} J")
    return {
        "inputs": tally.inputs, "seconds": round(elapsed, 1),
        "inputs_per_s": round(tally.inputs / elapsed, 1),
        "crashes": tally.crashes + (0 if alive else 1), "collector_alive": alive,
        "unexpected_answers": tally.answers["unexpected"], "unexpected_examples": tally.unexpected[:5],
        "stored_exactly": not mismatched, "stored_mismatches": mismatched[:5],
        "stored_batches_energy_j": round(sum(tally.stored_j.values()), 3),
        "peak_rss_mb": round(rss, 1), "by_kind": dict(tally.by_kind), "answers": dict(tally.answers),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inputs", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--database", default="fuzz")
    args = p.parse_args()
    nodes = ", ".join(f'"fz{w}"' for w in range(args.workers))
    with LocalInfluxDB() as influx, tempfile.TemporaryDirectory() as tmp:
        grpc_port, http_port = new_collector_ports()
        cfg = Path(tmp) / "collector.toml"
        cfg.write_text(
            f'[server]\ngrpc_listen = "127.0.0.1:{grpc_port}"\nhttp_listen = "127.0.0.1:{http_port}"\n'
            f"max_new_jobs_per_node_per_hour = 1000000\n"
            f"[influxdb]\nurl = {toml_str(influx.url)}\ndatabase = {toml_str(args.database)}\n"
            '[[zones]]\nname = "Z"\nintensity = { kind = "constant", g_per_kwh = 350.0 }\n'
            f'[[racks]]\nname = "r1"\nzone = "Z"\npue = 1.2\nnodes = [{nodes}]\n'
        )
        collector = CollectorProcess(cfg, grpc_port, http_port, log_path=Path(tmp) / "collector.log")
        collector.start()
        try:
            say(f"collector pid {collector.proc.pid if collector.proc else '?'}; {args.inputs} inputs, "
                f"{args.workers} workers")
            result = asyncio.run(run(args, collector, influx))
        finally:
            log_size = os.path.getsize(collector.log_path) if collector.log_path.exists() else 0
            collector.stop()
        result["collector_log_bytes"] = log_size
    print(json.dumps(result))
    ok = result["crashes"] == 0 and result["stored_exactly"] and not result["unexpected_answers"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
