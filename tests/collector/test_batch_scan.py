"""The batch scan (collector/batch_scan.py) and the cheaper digest give exactly what they replace."""

from __future__ import annotations

import hashlib

import pytest
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridwatt.collector import batch_scan
from gridwatt.collector.batch_scan import UNATTRIBUTED, scan_batch, share_info
from gridwatt.collector.points import _has_map_field, sample_digest
from gridwatt.collector.schema import _TAG_ESCAPES, tag
from gridwatt.collector.validation import BatchRejected, validate_batch
from gridwatt.v1 import telemetry_pb2 as pb
from tests.collector.cpu_golden import GOLDEN, LIMITS, NOW_NS, T0, corpus, render

NS = 10**9


def old_digest(s: pb.GpuSample) -> str:
    """The digest as every earlier version stored it."""
    return hashlib.sha256(s.SerializeToString(deterministic=True)).digest()[:16].hex()


def test_the_scanned_path_renders_the_golden_output() -> None:
    """prepare_batch and LiveAccounts.observe given validate_batch's scan (and digests computed
    beforehand, as ingest does) render the golden file byte for byte."""
    assert render(scanned=True) == GOLDEN.read_text(encoding="utf-8")


def test_validate_batch_returns_the_scan_scan_batch_makes() -> None:
    checked = 0
    for batch in corpus():
        scan = validate_batch(batch, LIMITS, NOW_NS)
        plain = scan_batch(batch)
        assert [s.SerializeToString() for s in scan.samples] == [s.SerializeToString() for s in plain.samples]
        assert scan.shares == plain.shares
        assert (scan.lo_ns, scan.hi_ns, scan.job_ids) == (plain.lo_ns, plain.hi_ns, plain.job_ids)
        expected_ids = [j.job_id for s in batch.gpu_samples for j in s.jobs if j.job_id != UNATTRIBUTED]
        assert scan.job_ids == expected_ids
        if batch.gpu_samples:
            assert scan.lo_ns == min(s.start_ns for s in batch.gpu_samples)
            assert scan.hi_ns == max(s.end_ns for s in batch.gpu_samples)
            checked += 1
        else:
            assert (scan.lo_ns, scan.hi_ns) == (0, 0)
    assert checked > 20


def test_share_info_reads_every_field_but_the_fraction() -> None:
    share = pb.JobShare(job_id="42", fraction=0.25, method=pb.ATTRIBUTION_METHOD_SLURM, user="u",
                        split_estimated=True, account="a", alias="42_1", partition="p", namespace="ns",
                        job_name="train")
    want = ("42", "42_1", pb.ATTRIBUTION_METHOD_SLURM, "u", True, "a", "p", "ns", "train")
    assert share_info(share) == want
    assert share_info(share) == want  # memoized
    other = pb.JobShare.FromString(share.SerializeToString())
    other.fraction = 0.5
    assert share_info(other) == want
    other.user = "v"
    assert share_info(other) == ("42", "42_1", pb.ATTRIBUTION_METHOD_SLURM, "v", True, "a", "p", "ns",
                                 "train")


def test_large_shares_are_not_memoized() -> None:
    big = pb.JobShare(job_id="7", fraction=1.0, job_name="x" * 600)
    assert share_info(big)[8] == "x" * 600
    assert big.SerializeToString() not in batch_scan.INFO_MEMO


def test_a_valid_share_does_not_vouch_for_another() -> None:
    """Validation remembers valid share infos; a share differing in any checked field is checked anew."""

    def batch(alias: str, fraction: float = 0.5, user: str = "alice") -> pb.Batch:
        s = pb.GpuSample(gpu_index=0, start_ns=T0, end_ns=T0 + NS, energy_j=100.0, mean_power_w=100.0)
        s.jobs.add(job_id="9001", fraction=fraction, alias=alias, user=user)
        return pb.Batch(node="n1", gpu_samples=[s])

    validate_batch(batch("9001_3"), LIMITS, NOW_NS)
    for _ in range(2):
        with pytest.raises(BatchRejected, match=r"jobs\.alias"):
            validate_batch(batch("9001_x"), LIMITS, NOW_NS)
        with pytest.raises(BatchRejected, match=r"jobs\.fraction"):
            validate_batch(batch("9001_3", fraction=1.5), LIMITS, NOW_NS)
        with pytest.raises(BatchRejected, match=r"jobs\.user"):
            validate_batch(batch("9001_3", user="al\nice"), LIMITS, NOW_NS)


def test_gpu_sample_has_no_map_field_and_a_map_is_found() -> None:
    assert not _has_map_field(pb.GpuSample.DESCRIPTOR)
    assert _has_map_field(struct_pb2.Struct.DESCRIPTOR)
    assert _has_map_field(struct_pb2.Value.DESCRIPTOR)  # through Struct, recursively


def test_digest_of_a_fixed_sample() -> None:
    """The digest is the first 16 bytes of SHA-256 of the deterministic bytes, in hex."""
    s = pb.GpuSample(gpu_index=3, gpu_uuid="GPU-1", start_ns=T0, end_ns=T0 + NS, energy_j=123.5,
                     jobs=[pb.JobShare(job_id="1", fraction=1.0)])
    raw = s.SerializeToString(deterministic=True)
    assert sample_digest(s) == hashlib.sha256(raw).hexdigest()[:32]


_doubles = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(-0.0), st.just(0.0))
_text = st.text(max_size=12)
_u32 = st.integers(0, 2**32 - 1)
_u64 = st.integers(0, 2**64 - 1)
_i64 = st.integers(-(2**63), 2**63 - 1)
_shares = st.builds(pb.JobShare, job_id=_text, fraction=_doubles, method=st.integers(0, 100), user=_text,
                    split_estimated=st.booleans(), account=_text, alias=_text, partition=_text,
                    namespace=_text, job_name=_text)
_samples = st.builds(
    pb.GpuSample, gpu_index=_u32, gpu_uuid=_text, gpu_name=_text, start_ns=_i64, end_ns=_i64,
    energy_j=_doubles, mean_power_w=_doubles, util_pct=_doubles, mem_util_pct=_doubles,
    mem_used_bytes=_u64, temp_c=_doubles, idle_s=_doubles, energy_method=st.integers(0, 50),
    jobs=st.lists(_shares, max_size=4), power_limit_w=_doubles, sm_clock_mhz=_u32,
    unsupported_fields=st.lists(_text, max_size=3),
)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


#: an unknown field (a newer agent's): field number, wire type (0 varint, 2 bytes), varint, bytes
Unknown = tuple[int, int, int, bytes]
_unknown = st.lists(st.tuples(st.integers(18, 5000), st.sampled_from([0, 2]), st.integers(0, 2**63),
                              st.binary(max_size=20)), max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(sample=_samples, unknown=_unknown, share_unknown=_unknown)
def test_digest_equals_the_deterministic_digest(sample: pb.GpuSample, unknown: list[Unknown],
                                                share_unknown: list[Unknown]) -> None:
    """On random samples, with unknown fields in the sample and in a share: the same digest as
    before, so resends of samples stored by older versions stay exact resends."""

    def extra(fields: list[Unknown]) -> bytes:
        out = b""
        for number, wire, value, blob in fields:
            out += _varint(number << 3 | wire) + (_varint(value) if wire == 0 else _varint(len(blob)) + blob)
        return out

    raw = sample.SerializeToString() + extra(unknown)
    if share_unknown:
        share = pb.JobShare.FromString(pb.JobShare(job_id="u", fraction=0.5).SerializeToString()
                                       + extra(share_unknown))
        raw += _varint(14 << 3 | 2) + _varint(len(share.SerializeToString())) + share.SerializeToString()
    parsed = pb.GpuSample.FromString(raw)
    assert sample_digest(parsed) == old_digest(parsed)
    assert sample_digest(sample) == old_digest(sample)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=st.text(alphabet=st.sampled_from(list("ab1-_.,= \\\n\t\"é")), max_size=12))
def test_tag_escapes_as_the_translation(value: str) -> None:
    """schema.tag's fast path (no character to escape) gives what the translation gives."""
    assert tag(value) == (value.translate(_TAG_ESCAPES) if value else "none")
