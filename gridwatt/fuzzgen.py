"""Structure-aware generation of gridwatt.v1 messages for fuzzing (Hypothesis tests and
benchmarks/fuzz_collector.py): mostly well-formed batches with one field pushed to an edge.

``random_batch(rng, ...)`` returns a batch and what the collector must answer: ``"ok"`` (and then
the exact energy that must be stored) or ``"refused"`` (INVALID_ARGUMENT with a named reason).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from gridwatt.v1 import telemetry_pb2 as pb

NS = 1_000_000_000
EDGE_FLOATS = [math.nan, math.inf, -math.inf, -1e300, 1e300, -0.0, 5e-324, 2.0**63, -1.0]
EDGE_INTS = [2**63, 2**64 - 1, 2**63 - 1]
#: Names the collector must refuse (gridwatt/names.py), and names it must store exactly.
EDGE_NAMES = ["", "a\\b", "ends\\", "a\rb", "a\0b", "x" * 129, "é", "a\nb", "\x7f"]
GOOD_NAMES = ["j-1", "a,b=c", "with space", "quote'd", 'dq"', "k8s-pod/x", "x" * 120]


@dataclass
class Generated:
    batch: pb.Batch
    expect: str  # "ok" or "refused"
    energy_j: float = 0.0


def good_sample(rng: random.Random, gpu: int, start_ns: int, seconds: int = 60) -> pb.GpuSample:
    power = rng.choice([0.0, 50.0, 300.0, 700.0])
    s = pb.GpuSample(gpu_index=gpu, gpu_uuid=f"GPU-{gpu}", start_ns=start_ns, end_ns=start_ns + seconds * NS,
                     energy_j=power * seconds, mean_power_w=power, util_pct=rng.uniform(0, 100),
                     mem_util_pct=rng.uniform(0, 100), mem_used_bytes=rng.randrange(0, 2**40),
                     temp_c=rng.uniform(20, 90), idle_s=0.0, power_limit_w=700.0)
    k = rng.randrange(0, 4)
    for i in range(k):
        s.jobs.add(job_id=f"{rng.choice(GOOD_NAMES)}-{i}", fraction=1.0 / max(k, 1), user="u")
    return s


def spoil(rng: random.Random, s: pb.GpuSample) -> None:
    """Push one field of ``s`` to an edge the collector must refuse."""
    choice = rng.randrange(12)
    if choice == 0:
        s.energy_j = rng.choice([math.nan, math.inf, -1.0, 1e300])
    elif choice == 1:
        s.mean_power_w = rng.choice([math.nan, math.inf, -math.inf, -1e300, 1e300])
    elif choice == 2:
        s.temp_c = rng.choice([math.nan, math.inf, -1e300, 1e300])
    elif choice == 3:
        s.mem_used_bytes = rng.choice([2**63, 2**64 - 1])
    elif choice == 4:
        s.util_pct = rng.choice([math.nan, -1.0, 100.5])
    elif choice == 5:
        s.jobs.add(job_id=rng.choice(EDGE_NAMES), fraction=0.1)
    elif choice == 6:
        s.jobs.add(job_id="dup", fraction=0.1)
        s.jobs.add(job_id="dup", fraction=0.1)
    elif choice == 7:
        s.end_ns = s.start_ns - rng.randrange(0, 10**9)
    elif choice == 8:
        s.gpu_uuid = rng.choice([u for u in EDGE_NAMES if u])
    elif choice == 9:
        for i in range(17):
            s.jobs.add(job_id=f"many-{i}", fraction=0.01)
    elif choice == 10:
        s.power_limit_w = rng.choice([math.nan, -5.0, 1e9])
    else:
        s.jobs.add(job_id="frac", fraction=rng.choice([math.nan, 0.0, 1.5, -0.1]))


def random_batch(rng: random.Random, node: str, batch_id: int, start_ns: int, bad_share: float = 0.7,
                 max_samples: int = 8) -> Generated:
    """A batch of non-overlapping samples from ``start_ns`` on; with probability ``bad_share`` one of
    them is spoiled (the whole batch must then be refused and nothing of it stored)."""
    n = rng.randrange(1, max_samples + 1)
    samples = [good_sample(rng, i % 4, start_ns + (i // 4) * 60 * NS) for i in range(n)]
    batch = pb.Batch(batch_id=batch_id, node=node, agent_version="fuzz", gpu_samples=samples)
    if rng.random() < bad_share:
        spoil(rng, batch.gpu_samples[rng.randrange(n)])
        return Generated(batch, "refused")
    return Generated(batch, "ok", sum(s.energy_j for s in samples))


def random_bytes(rng: random.Random, size: int = 64) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(0, size)))


def random_query_id(rng: random.Random) -> str:
    return rng.choice(GOOD_NAMES + EDGE_NAMES + ["".join(chr(rng.randrange(1, 0x2FF)) for _ in range(20))])
