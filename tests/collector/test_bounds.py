"""Pure parts of the bounds: the new-job budget and the one-GPU-second-once rule (no I/O)."""

from __future__ import annotations

import math

from gridwatt.collector.bounds import HOUR_S, JobSeriesBudget, NodeSlots
from gridwatt.collector.intervals import StoredGpuTime, StoredInterval, first_conflict, sample_digest
from gridwatt.v1 import telemetry_pb2 as pb

S = 1_000_000_000


def _s(gpu: int, start_s: int, end_s: int, energy: float = 60.0, job: str = "j") -> pb.GpuSample:
    return pb.GpuSample(gpu_index=gpu, start_ns=start_s * S, end_ns=end_s * S, energy_j=energy,
                        jobs=[pb.JobShare(job_id=job, fraction=1.0)])


def _check(samples: list[pb.GpuSample], stored: StoredGpuTime) -> str | None:
    return first_conflict(samples, [sample_digest(s) for s in samples], stored)


def test_job_budget_slides_over_the_hour() -> None:
    now = [0.0]
    budget = JobSeriesBudget(3, clock=lambda: now[0])
    new = budget.new_jobs("n", ["a", "b", "a"])
    assert new == ["a", "b"] and budget.check("n", new) == 0.0
    budget.admit("n", ["a", "b"], new)
    assert budget.new_jobs("n", ["a", "b", "c"]) == ["c"]
    assert budget.check("n", ["c", "d"]) == HOUR_S  # 2 + 2 > 3: wait until the first admission expires
    assert math.isinf(budget.check("n", ["w", "x", "y", "z"]))  # never fits
    assert budget.check("other", ["c", "d", "e"]) == 0.0  # per node
    now[0] = HOUR_S + 1
    assert budget.check("n", ["c", "d", "e"]) == 0.0 and budget.used("n") == 0


def test_node_slots() -> None:
    slots = NodeSlots(2)
    assert [slots.try_take("n"), slots.try_take("n"), slots.try_take("n"), slots.try_take("m")] == [
        True, True, False, True]
    slots.release("n")
    assert slots.held("n") == 1 and slots.try_take("n")


def test_interval_rules() -> None:
    a = _s(0, 0, 60)
    stored = StoredGpuTime({0: {0: StoredInterval(0, 60 * S, sample_digest(a), 60.0)}}, {})
    assert _check([a], stored) is None  # identical resend
    assert "repeats the start" in (_check([_s(0, 0, 60, job="other")], stored) or "")
    assert "repeats the start" in (_check([_s(0, 0, 60, energy=0.0)], stored) or "")
    assert "overlaps the stored interval" in (_check([_s(0, 30, 90)], stored) or "")
    assert _check([_s(0, 60, 120), _s(1, 0, 60)], stored) is None  # next interval; another GPU
    assert "of the same batch" in (_check([_s(1, 0, 60), _s(1, 59, 120)], stored) or "")
    before = StoredGpuTime({}, {0: 70 * S})  # a stored interval that started earlier ends at 70 s
    assert "ends at" in (_check([_s(0, 60, 120)], before) or "")
    legacy = StoredGpuTime({0: {0: StoredInterval(0, 60 * S, "", 60.0)}}, {})  # stored before digests
    assert _check([a], legacy) is None and _check([_s(0, 0, 60, energy=1.0)], legacy) is not None
