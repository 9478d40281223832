"""Structure-aware fuzzing of the collector with Hypothesis (small budget; benchmarks/fuzz_collector.py
runs the large one): gridwatt.v1 batches with fields drawn over their whole range, including NaN,
infinities, huge integers and any text. Whatever arrives, the collector answers OK (and then stores
exactly the batch's energy) or refuses with a named reason (and stores nothing of it), and keeps serving."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridwatt.demo_harness.influxdb import LocalInfluxDB
from gridwatt.v1 import telemetry_pb2 as pb
from tests.hostile.batches import NS, T0, Client
from tests.hostile.rig import AttackRig

#: Real collector and agent processes.
pytestmark = pytest.mark.e2e

REGION_NS = 3600 * NS
_region = itertools.count(1)
KNOWN_REASONS = ("field ", "too_many_", "interval_conflict", "batch has no samples", "gpu_samples[")

floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1000), st.just(0.0))
names = st.one_of(st.text(max_size=140), st.sampled_from(["j-1", "a,b=c", "k8s-pod/x", "x" * 128, "a\\b"]))


@st.composite
def gpu_samples(draw: st.DrawFn, base_ns: int) -> pb.GpuSample:
    start = base_ns + draw(st.integers(0, 50)) * 60 * NS
    seconds = draw(st.sampled_from([1, 60, 0, -5, 4000]))
    power = draw(floats)
    energy = draw(st.one_of(st.just(power * max(seconds, 0)), floats))
    jobs = draw(st.lists(st.tuples(names, st.one_of(st.floats(0, 1), floats), names), max_size=4))
    return pb.GpuSample(
        gpu_index=draw(st.integers(0, 2**32 - 1)), gpu_uuid=draw(names), start_ns=start,
        end_ns=start + seconds * NS, energy_j=energy, mean_power_w=power,
        util_pct=draw(floats), mem_util_pct=draw(floats), mem_used_bytes=draw(st.integers(0, 2**64 - 1)),
        temp_c=draw(floats), idle_s=draw(st.one_of(st.just(0.0), floats)), power_limit_w=draw(floats),
        jobs=[pb.JobShare(job_id=j, fraction=f, user=u) for j, f, u in jobs],
    )


@pytest.fixture(scope="module")
def fuzz_rig(tmp_path_factory: pytest.TempPathFactory, influxdb: LocalInfluxDB) -> Iterator[AttackRig]:
    rig = AttackRig(tmp_path_factory.mktemp("fuzz"), influxdb, "fuzz_collector").start()
    yield rig
    rig.close()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_batch_is_stored_exactly_or_refused_by_name(fuzz_rig: AttackRig, data: st.DataObject) -> None:
    base = T0 - 30 * 24 * REGION_NS + next(_region) * REGION_NS
    samples = data.draw(st.lists(gpu_samples(base), min_size=0, max_size=6))
    node = data.draw(st.sampled_from(["n1", "n1", "n1", "n2", "", "ghost", "a\\b"]))
    client = Client(fuzz_rig.address)
    code, details = client.write(pb.Batch(batch_id=1, node=node, gpu_samples=samples), timeout=60)
    client.close()
    assert fuzz_rig.collector.proc is not None and fuzz_rig.collector.proc.poll() is None
    assert len(details) < 2100
    row = fuzz_rig.query(f"SELECT count(energy_j), sum(energy_j) FROM gpu WHERE time >= {base} "
                         f"AND time < {base + REGION_NS}")
    if code == "OK":
        # a sample repeated within the batch (the same GPU, series and start, hence the same values:
        # anything else is an interval_conflict) is one point, as a resend is
        stored = {(s.gpu_index, s.gpu_uuid, s.start_ns): s.energy_j for s in samples}
        assert row.get("count", 0) == len(stored)
        assert row.get("sum", 0.0) == pytest.approx(sum(stored.values()), rel=1e-12, abs=1e-9)
    else:
        assert code in ("INVALID_ARGUMENT", "UNAVAILABLE"), (code, details)
        assert details.startswith(KNOWN_REASONS) or details.startswith("unknown_node"), details
        assert row == {}


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.one_of(st.binary(max_size=512), st.builds(lambda b: b.SerializeToString(),
                                                         st.builds(pb.Batch, node=names))))
def test_any_bytes_are_answered_and_never_crash(fuzz_rig: AttackRig, raw: bytes) -> None:
    import grpc

    with grpc.insecure_channel(fuzz_rig.address) as channel:
        write = channel.unary_unary("/gridwatt.v1.Ingest/Write")
        try:
            write(raw, timeout=30)
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name  # type: ignore[attr-defined]
    assert code in ("OK", "INVALID_ARGUMENT", "UNAVAILABLE")
    assert fuzz_rig.collector.proc is not None and fuzz_rig.collector.proc.poll() is None
