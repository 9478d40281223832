"""Who ran what on the wire is bounded: each of user, account, partition, namespace, job name at most
256 printable characters, else the batch is rejected naming the field."""

from __future__ import annotations

import pytest

from gridwatt.collector.validation import BatchRejected, Limits, validate_batch
from gridwatt.v1 import telemetry_pb2 as pb

T0 = 1_650_000_000 * 10**9
LIMITS = Limits(max_future_ns=300 * 10**9, max_power_w=2000.0, max_interval_ns=3600 * 10**9, min_time_ns=0)


def batch(**who: str) -> pb.Batch:
    sample = pb.GpuSample(gpu_index=0, gpu_uuid="GPU-0", start_ns=T0, end_ns=T0 + 60 * 10**9,
                          energy_j=18000.0, mean_power_w=300.0, util_pct=50.0)
    sample.jobs.add(job_id="j1", fraction=1.0, **who)
    return pb.Batch(batch_id=1, node="n1", gpu_samples=[sample])


def test_who_within_bounds_passes() -> None:
    who = {"user": "alice", "account": "physics", "partition": "gpu", "namespace": "ml",
           "job_name": "x" * 256}
    validate_batch(batch(**who), LIMITS, T0 + 120 * 10**9)


@pytest.mark.parametrize(("field", "value"), [
    ("account", "a" * 257), ("user", "bob\n"), ("partition", "p\x00"), ("namespace", "n" * 300),
    ("job_name", "tab\there"),
])
def test_who_out_of_bounds_is_rejected_naming_the_field(field: str, value: str) -> None:
    with pytest.raises(BatchRejected) as info:
        validate_batch(batch(**{field: value}), LIMITS, T0 + 120 * 10**9)
    message = str(info.value)
    assert f"field jobs.{field}:" in message and "256 characters or not printable" in message
    assert len(message) < 300
