"""A batch's GPU samples and job shares read once, for every stage of ingest (pure; no I/O).

Reading a field of a protobuf message (upb) costs a call, and ``sample.jobs`` makes a new container
and new share objects at every pass. Ingest used to pass over each sample's shares five times
(validation, the job budget, the gpu line's ``jobs`` field, the job lines, the live view). Here they
are read once (``validate_batch`` builds the scan as it checks the batch; ``scan_batch`` without
checks), each share as its :data:`ShareInfo` (every field but ``fraction``, memoized by the share's
serialized bytes: equal bytes parse to equal shares, so the memo cannot mix two shares up) and its
fraction, read from the message itself. Each sample's scalar fields are read once too, into a
:data:`Row` (a plain tuple: reading it back costs an index, not a call into upb).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gridwatt.v1 import telemetry_pb2 as pb

UNATTRIBUTED = "unattributed"

#: (job_id, alias, method, user, split_estimated, account, partition, namespace, job_name)
ShareInfo = tuple[str, str, int, str, bool, str, str, str, str]
#: A share of a sample: its info and its fraction.
Share = tuple[ShareInfo, float]

#: A GPU sample's scalar fields, read once: (start_ns, end_ns, energy_j, gpu_index, gpu_uuid, util_pct,
#: mem_util_pct, idle_s, mean_power_w, mem_used_bytes, temp_c, energy_method).
Row = tuple[int, int, float, int, str, float, float, float, float, int, float, int]

#: The info of the unattributed rest of a GPU interval.
UNATTRIBUTED_INFO: ShareInfo = (UNATTRIBUTED, "", pb.ATTRIBUTION_METHOD_UNSPECIFIED, "", False,
                                "", "", "", "")

#: Shares up to this many serialized bytes are memoized, at most ``MEMO_MAX`` of them (then the memo
#: is emptied): a few MB at most, whatever a node sends. A typical share is about 100 bytes.
MEMO_SHARE_BYTES = 512
MEMO_MAX = 20_000
#: share_info's memo (by the share's serialized bytes; validate_batch reads it inline)
INFO_MEMO: dict[bytes, ShareInfo] = {}


def share_info(share: pb.JobShare) -> ShareInfo:
    """Every field of ``share`` but ``fraction`` (see the module docstring)."""
    raw = share.SerializeToString()
    info = INFO_MEMO.get(raw)
    if info is None:
        info = (share.job_id, share.alias, share.method, share.user, share.split_estimated, share.account,
                share.partition, share.namespace, share.job_name)
        if len(raw) <= MEMO_SHARE_BYTES:
            if len(INFO_MEMO) >= MEMO_MAX:
                INFO_MEMO.clear()
            INFO_MEMO[raw] = info
    return info


@dataclass(slots=True)
class BatchScan:
    """A batch's GPU samples (the messages, in order) and their shares, read once."""

    samples: list[pb.GpuSample]
    #: per sample, its job shares in order (a tuple)
    shares: list[Sequence[Share]]
    #: earliest start and latest end of the samples (0, 0 without samples)
    lo_ns: int
    hi_ns: int
    #: the attributed job ids of all shares, in order (repeats kept): the job-series budget's input
    job_ids: list[str]
    #: each sample's scalar fields (:data:`Row`), in order
    rows: list[Row]
    #: each sample's digest (points.sample_digest), once computed
    digests: list[str] | None = None


@dataclass(slots=True)
class GpuSpan:
    """One GPU's samples in a batch: its index, earliest start and latest end (what held node state
    and the interval check need of the samples: collector/node_state.py)."""

    gpu_index: int
    start_ns: int
    end_ns: int


def gpu_spans(rows: list[Row]) -> list[GpuSpan]:
    """Per GPU of the rows (in the order of first appearance), its earliest start and latest end."""
    spans: dict[int, GpuSpan] = {}
    for row in rows:
        start, end, gpu = row[0], row[1], row[3]
        span = spans.get(gpu)
        if span is None:
            spans[gpu] = GpuSpan(gpu, start, end)
            continue
        if start < span.start_ns:
            span.start_ns = start
        if end > span.end_ns:
            span.end_ns = end
    return list(spans.values())


def sample_row(s: pb.GpuSample) -> Row:
    """A sample's :data:`Row`."""
    return (s.start_ns, s.end_ns, s.energy_j, s.gpu_index, s.gpu_uuid, s.util_pct, s.mem_util_pct, s.idle_s,
            s.mean_power_w, s.mem_used_bytes, s.temp_c, s.energy_method)


def scan_batch(batch: pb.Batch) -> BatchScan:
    """The scan of a batch, without checks (``validate_batch`` gives the same for a valid batch)."""
    samples = list(batch.gpu_samples)
    shares: list[Sequence[Share]] = []
    job_ids: list[str] = []
    rows = [sample_row(s) for s in samples]
    for s in samples:
        mine: list[Share] = []
        for share in s.jobs:
            info = share_info(share)
            mine.append((info, share.fraction))
            if info[0] != UNATTRIBUTED:
                job_ids.append(info[0])
        shares.append(tuple(mine))
    if not samples:
        return BatchScan(samples, shares, 0, 0, job_ids, rows)
    return BatchScan(samples, shares, min([r[0] for r in rows]), max([r[1] for r in rows]), job_ids, rows)
