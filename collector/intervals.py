"""One GPU-second is accounted once: a sample may only repeat a stored interval of its GPU exactly.

Before a batch is written, the stored ``gpu`` points of its node around the batch's time range are
read back (``stored_intervals``), and ``first_conflict`` (pure) finds the first sample that

* starts where a stored interval of the same GPU starts but has other values (another energy, other
  jobs, other fractions: a re-attribution or a rewrite of the past), or
* overlaps a stored interval of the same GPU, or another sample of the batch, without being the same.

Identity is the sample's digest (SHA-256 of its deterministic serialization), stored with each ``gpu``
point as the string field ``digest``, so an exact resend (at-least-once delivery) is recognised and
stays idempotent. Because the check reads the store, it holds across collector restarts and between
replicas (up to the instant between one replica's read and its write; a node streams to one replica).
A streamed batch in time order is checked against held state instead (collector/node_state.py,
``NodeHeld.interval_view``: the same answer, without a read), and a node's held state is dropped when
it opens a new stream, so between replicas the check holds as long as a node streams to one at a time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from gridwatt.collector import queries
from gridwatt.collector.batch_scan import Row, sample_row
from gridwatt.collector.points import sample_digest
from gridwatt.collector.store import InfluxStore, series_rows
from gridwatt.v1 import telemetry_pb2 as pb

__all__ = ["StoredGpuTime", "StoredInterval", "first_conflict", "sample_digest", "stored_intervals"]


@dataclass(frozen=True)
class StoredInterval:
    start_ns: int
    end_ns: int
    digest: str  # "" for points stored before digests were kept
    energy_j: float


@dataclass
class StoredGpuTime:
    """Stored intervals of one node's GPUs: those starting in the batch's range, and per GPU the
    latest end of those starting before it."""

    inside: dict[int, dict[int, StoredInterval]]
    end_before: dict[int, int]


async def stored_intervals(store: InfluxStore, node: str, lo_ns: int, hi_ns: int,
                           lookback_ns: int) -> StoredGpuTime:
    """Read the node's ``gpu`` points starting in [lo_ns, hi_ns), and the latest end before lo_ns."""
    q = queries.gpu_intervals(store.measurement, node, lo_ns, hi_ns, lookback_ns)
    inside_res, before_res = await store.query(q)
    inside: dict[int, dict[int, StoredInterval]] = defaultdict(dict)
    for tags, row in series_rows(inside_res):
        gpu = int(tags.get("gpu", "0"))
        t = int(row["time"])
        inside[gpu][t] = StoredInterval(t, int(row.get("end_ns") or t), str(row.get("digest") or ""),
                                        float(row.get("energy_j") or 0.0))
    end_before = {int(tags.get("gpu", "0")): int(row.get("max") or 0)
                  for tags, row in series_rows(before_res)}
    return StoredGpuTime(dict(inside), end_before)


def _same(s: pb.GpuSample, digest: str, stored: StoredInterval) -> bool:
    if stored.digest:
        return stored.digest == digest
    return stored.end_ns == s.end_ns and stored.energy_j == s.energy_j


def first_conflict(samples: Sequence[pb.GpuSample], digests: list[str], stored: StoredGpuTime,
                   rows: Sequence[Row] | None = None) -> str | None:
    """A description of the first sample that would account GPU time twice, or None.

    Each GPU's samples are taken in (start, end, index) order; the description of a sample is
    rendered only for the one returned. ``rows``: the samples' rows (collector/batch_scan.py), where
    already read.
    """
    if rows is None:
        rows = [sample_row(s) for s in samples]
    if not stored.inside and _in_order(rows, stored.end_before):
        return None
    by_gpu: dict[int, list[tuple[int, int, int]]] = {}
    for i, row in enumerate(rows):
        gpu = row[3]
        item = (row[0], row[1], i)
        mine = by_gpu.get(gpu)
        if mine is None:
            by_gpu[gpu] = [item]
        else:
            mine.append(item)
    for gpu, items in by_gpu.items():
        items.sort()
        inside = stored.inside.get(gpu)
        points = sorted(inside.values(), key=lambda p: p.start_ns) if inside else ()
        before = stored.end_before.get(gpu, 0)
        prev: tuple[int, int, int] | None = None
        for start, end, i in items:
            if prev is not None:
                p_start, p_end, p_i = prev
                if start < p_end and not (start == p_start and digests[i] == digests[p_i]):
                    return (f"{_where(i, gpu, start, end)} overlaps gpu_samples[{p_i}] ({p_start}..{p_end}) "
                            "of the same batch")
            prev = (start, end, i)
            if before > start:
                where = _where(i, gpu, start, end)
                return f"{where} overlaps a stored interval of this GPU that ends at {before}"
            for pt in points:
                if pt.start_ns >= end:
                    break
                if pt.start_ns == start:
                    if not _same(samples[i], digests[i], pt):
                        where = _where(i, gpu, start, end)
                        return (f"{where} repeats the start of a stored interval of this GPU with other "
                                f"values (stored {pt.start_ns}..{pt.end_ns}, {pt.energy_j!r} J); "
                                "a resend must be identical")
                elif pt.end_ns > start:
                    where = _where(i, gpu, start, end)
                    return f"{where} overlaps the stored interval {pt.start_ns}..{pt.end_ns} of this GPU"
    return None


def _in_order(rows: Sequence[Row], end_before: dict[int, int]) -> bool:
    """Whether each GPU's samples, in the batch's order, start at or after the end of its previous one
    (or of its stored intervals, ``end_before``) and end after they start: then they are already in
    ``first_conflict``'s order and none overlaps another or a stored interval before them. With no
    stored interval inside the batch's range, ``first_conflict`` then finds nothing (one pass, no sort)."""
    last_end: dict[int, int] = {}
    for row in rows:
        gpu = row[3]
        prev = last_end.get(gpu)
        if prev is None:
            prev = end_before.get(gpu, 0)
        start, end = row[0], row[1]
        if start < prev or end <= start:
            return False
        last_end[gpu] = end
    return True


def _where(i: int, gpu: int, start_ns: int, end_ns: int) -> str:
    return f"gpu_samples[{i}] (gpu {gpu}, {start_ns}..{end_ns})"
