"""Hostile batches and a blocking gRPC client for the attack tests."""

from __future__ import annotations

import time
from collections.abc import Iterable

import grpc

from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc

NS = 1_000_000_000
#: Sample time of the attackers' batches: two hours ago, an hour before the good agent's.
T0 = (time.time_ns() - 2 * 3600 * NS) // NS * NS


def sample(gpu: int = 0, start_ns: int = T0, seconds: int = 60, power_w: float = 300.0,
           jobs: Iterable[tuple[str, float]] = (("job-1", 1.0),)) -> pb.GpuSample:
    return pb.GpuSample(
        gpu_index=gpu, gpu_uuid=f"GPU-{gpu}", start_ns=start_ns, end_ns=start_ns + seconds * NS,
        energy_j=power_w * seconds, mean_power_w=power_w, util_pct=80.0,
        jobs=[pb.JobShare(job_id=j, fraction=f) for j, f in jobs],
    )


def batch(node: str, samples: Iterable[pb.GpuSample], batch_id: int = 1) -> pb.Batch:
    return pb.Batch(batch_id=batch_id, node=node, gpu_samples=list(samples))


class Client:
    """Unary Ingest.Write and Query.GetJob on one channel; answers (code name, details)."""

    def __init__(self, address: str, token: str = "", **options: int) -> None:
        self.channel = grpc.insecure_channel(address, options=list(options.items()))
        self.ingest = pb_grpc.IngestStub(self.channel)
        self.query = pb_grpc.QueryStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def write(self, b: pb.Batch, timeout: float = 60) -> tuple[str, str]:
        try:
            ack = self.ingest.Write(b, metadata=self.metadata, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details() or ""  # type: ignore[attr-defined]
        return "OK", ack.message

    def get_job(self, job_id: str, timeout: float = 60) -> tuple[str, str]:
        try:
            self.query.GetJob(pb.GetJobRequest(job_id=job_id), timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name, exc.details() or ""  # type: ignore[attr-defined]
        return "OK", ""

    def close(self) -> None:
        self.channel.close()
