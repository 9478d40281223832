"""A well-behaved agent for the attack tests, run as its own process.

``python -m tests.hostile.good_agent ADDRESS NODE OUT.json [--token T]`` streams one batch of
GPUS samples every PERIOD_S over one gRPC stream (like gridwatt-agent), one batch in flight, each
resent after UNAVAILABLE or a broken stream until it is acknowledged OK. Sample k of GPU g covers
[BASE + k s, BASE + (k+1) s) with exactly SAMPLE_J joules, so what must be stored is known exactly.
SIGTERM: stop making batches, deliver the pending one, write OUT.json (samples acknowledged,
their joules, every ack's latency in seconds, refusals) and exit 0.
"""

from __future__ import annotations

import json
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator

import grpc

from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc

GPUS = 2
PERIOD_S = 0.2
SAMPLE_J = 100.0  # 100 W over 1 s
NS = 1_000_000_000


def make_batch(node: str, batch_id: int, base_ns: int) -> pb.Batch:
    k = batch_id - 1
    batch = pb.Batch(batch_id=batch_id, node=node, agent_version="good-agent")
    for gpu in range(GPUS):
        start = base_ns + k * NS
        batch.gpu_samples.add(
            gpu_index=gpu, gpu_uuid=f"GPU-good-{gpu}", start_ns=start, end_ns=start + NS,
            energy_j=SAMPLE_J, mean_power_w=SAMPLE_J, util_pct=50.0,
            jobs=[pb.JobShare(job_id=f"good-job-{gpu}", fraction=1.0)],
        )
    return batch


def main(argv: list[str]) -> int:
    address, node, out = argv[0], argv[1], argv[2]
    token = argv[argv.index("--token") + 1] if "--token" in argv else ""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # sample time an hour ago, so that a long run never reaches the collector's future bound
    base_ns = (time.time_ns() - 3600 * NS) // NS * NS
    latencies: list[float] = []
    refusals: list[str] = []
    acked = 0
    errors = 0
    unavailable = 0
    next_id = 1
    pending: pb.Batch | None = None
    next_tick = time.monotonic()
    while not stop.is_set() or pending is not None:
        requests: queue.Queue[pb.Batch | None] = queue.Queue()

        def feed(q: queue.Queue[pb.Batch | None] = requests) -> Iterator[pb.Batch]:
            while (item := q.get()) is not None:
                yield item

        channel = grpc.insecure_channel(address)
        try:
            responses = pb_grpc.IngestStub(channel).Stream(feed(), metadata=metadata)
            while not stop.is_set() or pending is not None:
                if pending is None:
                    pending = make_batch(node, next_id, base_ns)
                    next_id += 1
                t0 = time.monotonic()
                requests.put(pending)
                ack = next(responses)
                latencies.append(time.monotonic() - t0)
                if ack.code == 0:
                    acked += len(pending.gpu_samples)
                    pending = None
                elif ack.code == 3:
                    refusals.append(ack.message[:300])
                    pending = None
                else:
                    unavailable += 1
                    time.sleep(max(ack.retry_after_ms / 1000.0, 0.05))
                    continue
                next_tick += PERIOD_S
                time.sleep(max(0.0, next_tick - time.monotonic()))
        except (grpc.RpcError, StopIteration) as exc:
            errors += 1
            refusals.append(f"stream ended: {exc}"[:300]) if errors <= 20 else None
            time.sleep(0.2)
        finally:
            requests.put(None)
            channel.close()
    with open(out, "w") as fh:
        json.dump({"acked_samples": acked, "energy_j": acked * SAMPLE_J, "latencies_s": latencies,
                   "refusals": refusals, "stream_errors": errors, "unavailable": unavailable,
                   "batches": next_id - 1}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
