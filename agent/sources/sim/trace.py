"""Traces of per-GPU power, utilisation and job over time, from CSV or a synthetic profile.

CSV columns (header required; extra columns ignored)::

    time,gpu,power_w,util_pct[,mem_util_pct,mem_used_bytes,temp_c,job_id,user,node,
    account,partition,namespace,job_name]

Each row says: from ``time`` on, GPU ``gpu`` draws ``power_w`` at ``util_pct``,
running ``job_id`` (empty: no job). A row with ``power_w`` and ``util_pct`` both empty
marks the GPU absent (switched off, removed) from ``time`` until its next row: no
samples, so no idle GPU-hours. The trace ends at the latest time in the file (of
every node's rows); rows at that time only mark the end. With a ``node`` column,
only rows for the agent's own node are played, so one file can describe a whole
cluster; a node without rows plays nothing.

Idle time is decided per sampling interval (``interval_s``) from the interval's mean
utilisation, so a replay's interval should line up with the trace's steps (e.g. 60 s
for a trace of whole minutes); a step change inside an interval is averaged.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from gridwatt.textfile import checked_lines
from gridwatt.timeutil import parse_time_ns


class TraceError(Exception):
    """A trace file that cannot be played; the message names file, line, field and value."""


@dataclass(frozen=True, slots=True)
class TraceStep:
    """One GPU's state from ``t_ns`` until its next step."""

    t_ns: int
    power_w: float
    util_pct: float
    mem_util_pct: float = 0.0
    mem_used_bytes: int = 0
    temp_c: float = 0.0
    job_id: str = ""
    user: str = ""
    #: The GPU is not there (switched off): no readings until the next step.
    absent: bool = False
    account: str = ""
    partition: str = ""
    namespace: str = ""
    job_name: str = ""

    @property
    def who(self) -> tuple[str, str, str, str, str, str]:
        """(job_id, user, account, partition, namespace, job_name)."""
        return (self.job_id, self.user, self.account, self.partition, self.namespace, self.job_name)


@dataclass
class Trace:
    """Per-GPU step functions over [start_ns, end_ns)."""

    start_ns: int
    end_ns: int
    gpus: dict[int, list[TraceStep]] = field(default_factory=dict)


def _num(path: Path, line: int, name: str, raw: str, lo: float, hi: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise TraceError(f"{path}:{line}: field {name}: {raw!r} is not a number") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise TraceError(f"{path}:{line}: field {name}: {raw!r} is outside [{lo:g}, {hi:g}]")
    return value


def load_trace_csv(path: Path, node: str | None = None) -> Trace:
    """Read a trace CSV; raise TraceError naming the file, line and field of any bad value."""
    try:
        fh = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise TraceError(f"{path}: cannot open trace: {exc.strerror}") from None
    steps: dict[int, list[TraceStep]] = {}
    lines: dict[tuple[int, int], int] = {}  # (gpu, time) → line, for duplicates
    times: list[int] = []  # this node's
    file_start = file_end = None
    with fh:
        reader = csv.DictReader(checked_lines(fh, path, TraceError))
        header = reader.fieldnames or []
        missing = {"time", "gpu", "power_w", "util_pct"} - set(header)
        if missing:
            raise TraceError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            if None in row.values() or None in row:
                short = None in row.values()
                raise TraceError(f"{path}:{line}: {'fewer' if short else 'more'} fields than the header's "
                                 f"{len(header)} ({', '.join(header)})")
            try:
                t_ns = parse_time_ns(row["time"])
            except ValueError:
                raise TraceError(f"{path}:{line}: field time: {row['time']!r} is not a time") from None
            file_start = t_ns if file_start is None else min(file_start, t_ns)
            file_end = t_ns if file_end is None else max(file_end, t_ns)
            if node is not None and row.get("node") not in (None, "", node):
                continue
            try:
                gpu = int(row["gpu"])
            except ValueError:
                raise TraceError(f"{path}:{line}: field gpu: {row['gpu']!r} is not an index") from None
            if (gpu, t_ns) in lines:
                raise TraceError(f"{path}:{line}: gpu {gpu} already has a row at {row['time'].strip()} "
                                 f"(line {lines[gpu, t_ns]})")
            lines[gpu, t_ns] = line
            times.append(t_ns)
            if not row["power_w"].strip() and not row["util_pct"].strip():
                steps.setdefault(gpu, []).append(TraceStep(t_ns, 0.0, 0.0, absent=True))
                continue
            steps.setdefault(gpu, []).append(
                TraceStep(
                    t_ns=t_ns,
                    power_w=_num(path, line, "power_w", row["power_w"], 0, 5000),
                    util_pct=_num(path, line, "util_pct", row["util_pct"], 0, 100),
                    mem_util_pct=_num(path, line, "mem_util_pct", row.get("mem_util_pct") or "0", 0, 100),
                    mem_used_bytes=int(_num(path, line, "mem_used_bytes", row.get("mem_used_bytes") or "0",
                                            0, 2**50)),
                    temp_c=_num(path, line, "temp_c", row.get("temp_c") or "0", -50, 150),
                    job_id=(row.get("job_id") or "").strip(),
                    user=(row.get("user") or "").strip(),
                    account=(row.get("account") or "").strip(),
                    partition=(row.get("partition") or "").strip(),
                    namespace=(row.get("namespace") or "").strip(),
                    job_name=(row.get("job_name") or "").strip(),
                )
            )
    if file_start is None or file_end is None:
        raise TraceError(f"{path}: no rows")
    if file_end <= file_start:
        raise TraceError(f"{path}: the trace must span some time (add a final row marking its end)")
    for gsteps in steps.values():
        gsteps.sort(key=lambda s: s.t_ns)
    if not times:  # this node has no rows: it plays nothing (Trace.gpus is empty)
        return Trace(file_start, file_end, {})
    start_ns = min(times)
    if start_ns >= file_end:
        return Trace(start_ns, start_ns, {})
    return Trace(start_ns, file_end, steps)


def synthetic_trace(
    gpus: int,
    start_ns: int,
    duration_s: float,
    power_w: float,
    util_pct: float,
    job_id: str = "",
    mem_used_bytes: int = 0,
) -> Trace:
    """Every GPU at a constant power and utilisation for ``duration_s``."""
    temp_c = 30.0 + power_w / 10.0
    step = TraceStep(start_ns, power_w, util_pct, util_pct / 2, mem_used_bytes, temp_c, job_id)
    end_ns = start_ns + round(duration_s * 1e9)
    return Trace(start_ns, end_ns, {i: [step] for i in range(gpus)})
