"""The Sampler's samples, byte for byte, against samples built field by field from the readings.

The Sampler builds each sample from a per-GPU template (identity, unsupported fields, job shares)
and sets the interval's own values; these tests build the expected samples independently, every
field named, and compare the serialized bytes, across job changes, invalid ids, users, more than
MAX_JOB_SHARES jobs, unsupported fields, counter resets and faults.
"""

from __future__ import annotations

from gridwatt.agent.attribution import Attributor
from gridwatt.agent.sampler import MAX_JOB_SHARES, Sampler
from gridwatt.agent.sources.base import GpuReading, JobHint
from gridwatt.v1 import telemetry_pb2 as pb

T0 = 1_700_000_000 * 10**9
S = 10**9


def reading(index: int, t_s: int, energy_mj: int | None, power_mw: int = 300_000, *,
            jobs: tuple[JobHint, ...] = (), util: float = 50.0, fault: str = "",
            unsupported: tuple[str, ...] = ()) -> GpuReading:
    return GpuReading(index=index, uuid=f"GPU-{index}", name="Sim GPU", t_ns=T0 + t_s * S,
                      energy_mj=energy_mj, power_mw=power_mw, util_pct=util, mem_util_pct=util / 2,
                      mem_used_bytes=1000 + index, temp_c=40.0 + index, power_limit_mw=400_000,
                      sm_clock_mhz=1400, jobs=jobs, unsupported=unsupported, fault=fault)


def expected(index: int, t0_s: int, t1_s: int, energy_j: float, method: int, util: float,
             jobs: list[pb.JobShare], unsupported: tuple[str, ...] = ()) -> bytes:
    """The sample as the wire contract defines it, built field by field."""
    duration_s = float(t1_s - t0_s)
    return pb.GpuSample(
        gpu_index=index, gpu_uuid=f"GPU-{index}", gpu_name="Sim GPU", start_ns=T0 + t0_s * S,
        end_ns=T0 + t1_s * S, energy_j=energy_j, mean_power_w=energy_j / duration_s, util_pct=util,
        mem_util_pct=util / 2, mem_used_bytes=1000 + index, temp_c=40.0 + index,
        idle_s=duration_s if util < 5 else 0.0, energy_method=method,  # type: ignore[arg-type]
        power_limit_w=400.0, sm_clock_mhz=1400, unsupported_fields=list(unsupported), jobs=jobs,
    ).SerializeToString()


def share(job_id: str, fraction: float, user: str = "", **who: str) -> pb.JobShare:
    return pb.JobShare(job_id=job_id, fraction=fraction, method=pb.ATTRIBUTION_METHOD_TRACE, user=user, **who)


COUNTER = pb.ENERGY_METHOD_COUNTER


def test_static_job_samples_are_byte_identical_to_field_by_field_ones() -> None:
    sampler = Sampler(Attributor("job-7"), idle_below_pct=5)
    static = [pb.JobShare(job_id="job-7", fraction=1.0, method=pb.ATTRIBUTION_METHOD_STATIC)]
    assert sampler.take([reading(0, 0, 1_000_000), reading(1, 0, 2_000_000)]) == []
    got = sampler.take([reading(0, 1, 1_250_000), reading(1, 1, 2_300_500, util=2.0)])
    assert [s.SerializeToString() for s in got] == [
        expected(0, 0, 1, 250.0, COUNTER, 50.0, static),
        expected(1, 0, 1, 300.5, COUNTER, 2.0, static),
    ]
    got = sampler.take([reading(0, 3, 1_750_000), reading(1, 3, 2_900_500)])
    assert [s.SerializeToString() for s in got] == [
        expected(0, 1, 3, 500.0, COUNTER, 50.0, static),
        expected(1, 1, 3, 600.0, COUNTER, 50.0, static),
    ]


def test_changing_jobs_rebuild_the_shares_each_interval() -> None:
    sampler = Sampler(Attributor(), idle_below_pct=5)
    a = (JobHint("job-a", 1.0, "alice", account="acct", partition="gpu", job_name="train"),)
    ab = (JobHint("job-a", 0.25, "alice"), JobHint("job-b", 0.75, "bob\x07"))  # bob's name is not sendable
    bad = (JobHint("job\\bad", 0.5), JobHint("job-c", 0.5), JobHint("job-idle", 0.0))
    plan = [a, a, ab, (), bad, a]
    energies = [0, 100, 250, 400, 600, 900]
    out = []
    for t, (jobs, e) in enumerate(zip(plan, energies, strict=True)):
        out += [s.SerializeToString() for s in sampler.take([reading(3, t, 5_000_000 + e * 1000, jobs=jobs)])]
    assert out == [
        expected(3, 0, 1, 100.0, COUNTER, 50.0, [share("job-a", 1.0, "alice", account="acct",
                                                       partition="gpu", job_name="train")]),
        expected(3, 1, 2, 150.0, COUNTER, 50.0, [share("job-a", 0.25, "alice"), share("job-b", 0.75, "")]),
        expected(3, 2, 3, 150.0, COUNTER, 50.0, []),  # no jobs: unattributed
        expected(3, 3, 4, 200.0, COUNTER, 50.0, [share("job-c", 0.5)]),  # bad id and idle job left out
        expected(3, 4, 5, 300.0, COUNTER, 50.0, [share("job-a", 1.0, "alice", account="acct",
                                                       partition="gpu", job_name="train")]),
    ]


def test_more_jobs_than_the_bound_keep_the_largest() -> None:
    sampler = Sampler(Attributor(), idle_below_pct=5)
    n = MAX_JOB_SHARES + 4
    hints = tuple(JobHint(f"j{i:02d}", (i + 1) / (n * (n + 1) / 2)) for i in range(n))
    sampler.take([reading(0, 0, 0, jobs=hints)])
    (got,) = sampler.take([reading(0, 1, 400_000, jobs=hints)])
    largest = sorted(hints, key=lambda h: -h.fraction)[:MAX_JOB_SHARES]
    assert got.SerializeToString() == expected(0, 0, 1, 400.0, COUNTER, 50.0,
                                               [share(h.job_id, h.fraction) for h in largest])


def test_unsupported_counter_resets_and_faults() -> None:
    sampler = Sampler(Attributor("j"), idle_below_pct=5)
    static = [pb.JobShare(job_id="j", fraction=1.0, method=pb.ATTRIBUTION_METHOD_STATIC)]
    no_counter = ("energy_counter",)
    seq = [
        [reading(0, 0, None, 200_000, unsupported=no_counter), reading(1, 0, 9_000_000)],
        [reading(0, 2, None, 300_000, unsupported=no_counter), reading(1, 2, 1_000)],  # 1: reset
        [reading(0, 3, None, 300_000), reading(1, 3, 0, fault="gpu_lost")],  # 0 gains the counter field
        [reading(0, 4, 10_000), reading(1, 4, 5_000)],  # 1 is back: a new baseline, no sample
        [reading(0, 5, 70_000), reading(1, 5, 65_000)],
    ]
    out = [s.SerializeToString() for readings in seq for s in sampler.take(readings)]
    assert out == [
        expected(0, 0, 2, 500.0, pb.ENERGY_METHOD_POWER_AVERAGE, 50.0, static, no_counter),
        expected(1, 0, 2, 600.0, pb.ENERGY_METHOD_POWER_AVERAGE, 50.0, static),
        expected(0, 2, 3, 300.0, pb.ENERGY_METHOD_POWER_AVERAGE, 50.0, static),
        expected(0, 3, 4, 300.0, pb.ENERGY_METHOD_POWER_AVERAGE, 50.0, static),
        expected(0, 4, 5, 60.0, COUNTER, 50.0, static),
        expected(1, 4, 5, 60.0, COUNTER, 50.0, static),
    ]
