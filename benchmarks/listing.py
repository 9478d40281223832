"""Job listing and usage latency: a month of 64 GPUs (8 nodes x 8) running 10,000 jobs.

Writes the month's per-job windows (``job_window``, 60 s windows, the points the collector's
rollup writes after ingest; 8 nodes x 43,200 windows = 345,600 points, 1,250 jobs back to back per
node, users in 20 accounts) into a local InfluxDB 1.x with the collector's own line renderer, starts
the collector (reads authenticated, an operator token), then times through its HTTP API:

* ``GET /v1/jobs?limit=50`` (the first page of the 10,000 jobs, newest first);
* ``GET /v1/usage?group_by=account&since=...&until=...`` over the month;
* the first page again with a different ``since`` each time, so that the index's kept answer of
  the previous request does not apply (``listing_new_range_*``: the cost of summing the index).

The raw samples (64 GPUs at 10 s: 17.9 M) are not ingested: listings and usage read only the
windows, whose number does not depend on the sample interval. Last line JSON.
Goals (issue #10): listing first page p99 < 200 ms; the month's usage < 1 s. The collector is started
on the written month, as after a restart: ``first_answer_after_start_s`` is how long until its first
answer (the index filling from InfluxDB); the timings after it are of a running collector.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from gridwatt.collector.auth import hash_token
from gridwatt.collector.config import CollectorConfig
from gridwatt.collector.rollup import job_window_lines
from gridwatt.collector.server import start_collector
from gridwatt.configfile import load_config
from gridwatt.demo_harness.influxdb import LocalInfluxDB, free_port
from gridwatt.demo_harness.processes import toml_str

START_NS = 1_654_041_600 * 10**9  # 2022-06-01T00:00:00Z
WINDOW_NS = 60 * 10**9
TOKEN = "benchmark-operator-token-0123456789"


def say(msg: str) -> None:
    print(f"[listing] {msg}", file=sys.stderr, flush=True)


def month_lines(nodes: int, windows: int, jobs: int) -> list[str]:
    """job_window lines: each node runs jobs back to back; each job 8 GPUs at 300 W."""
    per_node = jobs // nodes
    span = windows // per_node
    lines: list[str] = []
    for n in range(nodes):
        node = f"gpu-{n:02d}"
        for k in range(per_node):
            job = f"job-{n:02d}-{k:05d}"
            serial = n * per_node + k
            who = {"user": f"user{serial % 200:03d}", "account": f"acct{serial % 20:02d}", "partition": "gpu",
                   "job_name": "train"}
            windows_of_job = {}
            for w in range(k * span, (k + 1) * span if k < per_node - 1 else windows):
                t = START_NS + w * WINDOW_NS
                e = 8 * 300.0 * 60
                windows_of_job[(t, job)] = {"e": e, "f": e * 1.2, "c": e * 1.2 / 3.6e6 * 350, "ce": 0.0,
                                            "d": 480.0, "u": 480.0 * 85, "i": 0.0, "ie": 0.0, "n": 8,
                                            "end_ns": t + WINDOW_NS, **who}
            lines += job_window_lines(node, "r1", windows_of_job)
    return lines


async def timed(n: int, fn: object) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()  # type: ignore[operator]
        out.append((time.perf_counter() - t0) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


async def main_async(args: argparse.Namespace) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="gridwatt-listing-"))
    with LocalInfluxDB(data_dir=folder / "influxdb") as db:
        grpc_port, http_port = free_port(), free_port()
        (folder / "principals.toml").write_text(
            f'[[principals]]\nname = "ops"\nrole = "operator"\ntoken = "{hash_token(TOKEN)}"\n')
        (folder / "principals.toml").chmod(0o600)
        cfg = folder / "collector.toml"
        nodes = [f"gpu-{i:02d}" for i in range(args.nodes)]
        cfg.write_text(
            f'[server]\ngrpc_listen = "127.0.0.1:{grpc_port}"\nhttp_listen = "127.0.0.1:{http_port}"\n'
            f"[influxdb]\nurl = {toml_str(db.url)}\n"
            f"[reads]\nprincipals_file = {toml_str(folder / 'principals.toml')}\n"
            '[[zones]]\nname = "Z"\nintensity = { kind = "constant", g_per_kwh = 350.0 }\n'
            f'[[racks]]\nname = "r1"\nzone = "Z"\npue = 1.2\nnodes = {json.dumps(nodes)}\n'
        )
        writer = await start_collector(load_config(cfg, CollectorConfig))
        windows = args.days * 1440
        lines = month_lines(args.nodes, windows, args.jobs)
        t0 = time.perf_counter()
        try:
            for i in range(0, len(lines), 5000):
                await writer.store.write_lines(lines[i:i + 5000])
        finally:
            await writer.stop(grace_s=1)
        say(f"wrote {len(lines)} job_window points ({args.jobs} jobs) in {time.perf_counter() - t0:.1f} s")
        # a collector starting on a month of data: its job index fills from InfluxDB
        t0 = time.perf_counter()
        running = await start_collector(load_config(cfg, CollectorConfig))
        try:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            base = f"http://127.0.0.1:{http_port}"
            until = START_NS + windows * WINDOW_NS
            async with aiohttp.ClientSession(headers=headers) as http:

                async def first_page() -> None:
                    async with http.get(f"{base}/v1/jobs?limit=50") as resp:
                        assert resp.status == 200, await resp.text()
                        body = await resp.json()
                        assert len(body["jobs"]) == 50 and body["next_cursor"]

                extra_hour = iter(range(10**6))

                async def usage(new_range: bool = False) -> None:
                    # new_range: one more hour at the end each time (after the data): no kept answer
                    end_s = until / 1e9 + (3600 * next(extra_hour) if new_range else 0)
                    async with http.get(f"{base}/v1/usage", params={
                        "group_by": "account", "since": "2022-06-01T00:00:00Z",
                        "until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(end_s))}) as resp:
                        assert resp.status == 200, await resp.text()
                        body = await resp.json()
                        assert len(body["groups"]) == 20
                        assert sum(g["jobs"] for g in body["groups"]) == args.jobs // args.nodes * args.nodes

                cold = (await timed(1, first_page))[0]
                cold_s = time.perf_counter() - t0
                say(f"first answer {cold:.0f} ms, {cold_s:.1f} s after the collector started (index filled)")
                await timed(3, first_page)
                listing = await timed(args.repeat, first_page)
                hour = iter(range(10**6))

                async def first_page_new_range() -> None:
                    # a different since each time: the index's kept answers do not apply
                    since_s = START_NS / 1e9 + 3600 * next(hour)
                    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since_s))
                    async with http.get(f"{base}/v1/jobs", params={"limit": "50", "since": since}) as resp:
                        assert resp.status == 200, await resp.text()
                        assert len((await resp.json())["jobs"]) == 50

                uncached = await timed(args.repeat, first_page_new_range)
                await timed(1, usage)
                month = await timed(max(5, args.repeat // 10), usage)

                async def usage_new_range() -> None:
                    await usage(new_range=True)

                month_new = await timed(max(5, args.repeat // 10), usage_new_range)
        finally:
            await running.stop(grace_s=1)
    return {
        "listing_p50_ms": round(statistics.median(listing), 1),
        "listing_p99_ms": round(pct(listing, 99), 1),
        "listing_new_range_p50_ms": round(statistics.median(uncached), 1),
        "listing_new_range_p99_ms": round(pct(uncached, 99), 1),
        "usage_month_p50_ms": round(statistics.median(month), 1),
        "usage_month_max_ms": round(max(month), 1),
        "usage_month_new_range_p50_ms": round(statistics.median(month_new), 1),
        "usage_month_new_range_max_ms": round(max(month_new), 1),
        "first_answer_after_start_s": round(cold_s, 1),
        "jobs": args.jobs // args.nodes * args.nodes,
        "job_window_points": len(lines),
        "repeat": args.repeat,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=100)
    args = p.parse_args()
    result = asyncio.run(main_async(args))
    say(f"GET /v1/jobs first page: p50 {result['listing_p50_ms']} ms, p99 {result['listing_p99_ms']} ms; "
        f"month's usage by account: p50 {result['usage_month_p50_ms']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
