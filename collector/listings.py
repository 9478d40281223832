"""Job listings and usage by user, account, rack or zone, read from ``job_window`` points.

Both read the per-job, per-node windows (``job_window``, one point per job, node and
``rack_resolution_s`` window) whose start lies in [since, until) taken to whole hours (through the
in-memory index, collector/job_index.py), so a job's figures here are its figures within that
range (without a range: the whole job, equal to its job report). Who ran a job
is the last non-empty ``user``/``account``/... of its windows in the range. Every listing is
filtered to what the principal may see (collector/read_auth.py). The accounting is pure
(``job_rows``, ``summarise``, ``usage_groups``); ``scan_jobs`` is the one read.
"""

from __future__ import annotations

import base64
import binascii
import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gridwatt.collector import queries
from gridwatt.collector.accounting import J_PER_KWH
from gridwatt.collector.read_auth import Principal
from gridwatt.collector.schema import WHO_FIELDS
from gridwatt.collector.store import InfluxStore, series_rows
from gridwatt.timeutil import format_time_ns

WHO = WHO_FIELDS
GROUP_BY = ("user", "account", "rack", "zone")
SUM_KEYS = _SUM_KEYS = ("e", "f", "c", "ce", "g", "u", "i", "ie")
MAX_LIMIT = 1000
DEFAULT_LIMIT = 50


class ListingError(ValueError):
    """A bad listing request (HTTP 400); the message names the parameter."""


@dataclass(slots=True)
class JobSums:
    """One job's sums over the range (J, g, GPU-s), per rack, and who ran it."""

    job_id: str
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_SUM_KEYS, 0.0))
    by_rack: dict[str, dict[str, float]] = field(default_factory=dict)
    nodes: set[str] = field(default_factory=set)
    first_window_ns: int = 0
    end_ns: int = 0
    who: dict[str, str] = field(default_factory=dict)


async def scan_jobs(store: InfluxStore, since_ns: int | None, until_ns: int | None) -> dict[str, JobSums]:
    """Every job with a window in [since, until): its sums per node and rack, and who ran it."""
    sums_res, who_res, first_res = await store.query(
        queries.job_sums_in_range(store.measurement, since_ns, until_ns))
    return job_rows(series_rows(sums_res), series_rows(who_res), series_rows(first_res))


def job_rows(
    sums: list[tuple[dict[str, str], dict[str, Any]]],
    who: list[tuple[dict[str, str], dict[str, Any]]],
    first: list[tuple[dict[str, str], dict[str, Any]]],
) -> dict[str, JobSums]:
    """Pure: the rows of scan_jobs' three statements, folded per job."""
    jobs: dict[str, JobSums] = {}
    for tags, row in sums:
        job = jobs.setdefault(tags.get("job_id", ""), JobSums(tags.get("job_id", "")))
        rack = job.by_rack.setdefault(tags.get("rack", ""), dict.fromkeys(_SUM_KEYS, 0.0))
        for key in _SUM_KEYS:
            value = float(row.get(key) or 0.0)
            job.sums[key] += value
            rack[key] += value
        job.nodes.add(tags.get("node", ""))
        job.end_ns = max(job.end_ns, int(row.get("end_ns") or 0))
    for tags, row in who:
        found = jobs.get(tags.get("job_id", ""))
        if found is not None:
            found.who = {name: str(row.get(name) or "") for name in WHO}
    for tags, row in first:
        found = jobs.get(tags.get("job_id", ""))
        if found is not None:
            found.first_window_ns = int(row.get("time") or 0)
    return jobs


def visible(principal: Principal, job: JobSums, user: str | None = None, account: str | None = None) -> bool:
    """Whether the principal may see the job, and it matches the user/account filters."""
    j_user, j_account = job.who.get("user", ""), job.who.get("account", "")
    if not principal.may_see_job(j_user, j_account):
        return False
    return (user is None or j_user == user) and (account is None or j_account == account)


def figures(s: Mapping[str, float]) -> dict[str, float]:
    """Report figures from sums (J, g, GPU-s)."""
    e, f, c, g = s["e"], s["f"], s["c"], s["g"]
    return {
        "gpu_hours": g / 3600.0,
        "it_energy_kwh": e / J_PER_KWH,
        "facility_energy_kwh": f / J_PER_KWH,
        "co2e_kg": c / 1000.0,
        "idle_energy_kwh": s["ie"] / J_PER_KWH,
        "idle_share": s["i"] / g if g else 0.0,
        "mean_util_pct": s["u"] / g if g else 0.0,
        "mean_pue": f / e if e else 0.0,
        "mean_intensity_g_per_kwh": c * J_PER_KWH / f if f else 0.0,
        "estimated_share": min(max(s["ce"] / c, 0.0), 1.0) if c > 0 else 0.0,
    }


def summarise(job: JobSums) -> dict[str, Any]:
    """One listing row: the job's report summary within the range."""
    return {
        "job_id": job.job_id,
        **{name: job.who.get(name, "") for name in WHO},
        "first_window": format_time_ns(job.first_window_ns),
        "end": format_time_ns(job.end_ns),
        "end_ns": job.end_ns,
        "nodes": sorted(job.nodes),
        **figures(job.sums),
    }


def encode_cursor(end_ns: int, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{end_ns}:{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """(end_ns, job_id) of the last row of the previous page; ListingError if it is not a cursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        end, _, job_id = raw.partition(":")
        return int(end), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ListingError(f"cursor: {cursor[:40]!r} is not a cursor from a previous page") from None


def list_page(
    jobs: Mapping[str, JobSums], principal: Principal, user: str | None, account: str | None,
    limit: int, cursor: str | None,
) -> dict[str, Any]:
    """Pure: the page of visible jobs, newest (latest end) first, ties by job id; with next_cursor."""
    candidates: Any = jobs.values()
    if not (principal.operator and user is None and account is None):
        candidates = [j for j in candidates if visible(principal, j, user, account)]
    if cursor:
        end_ns, job_id = decode_cursor(cursor)
        after = (-end_ns, job_id)
        candidates = [j for j in candidates if (-j.end_ns, j.job_id) > after]
    rows = heapq.nsmallest(limit + 1, candidates, key=lambda j: (-j.end_ns, j.job_id))
    page = rows[:limit]
    more = len(rows) > limit
    return {
        "jobs": [summarise(j) for j in page],
        "next_cursor": encode_cursor(page[-1].end_ns, page[-1].job_id) if more and page else None,
    }


def usage_groups(
    jobs: Mapping[str, JobSums], principal: Principal, group_by: str, zone_of_rack: Mapping[str, str],
) -> list[dict[str, Any]]:
    """Pure: usage per user, account, rack or zone of the jobs the principal may see."""
    if group_by not in GROUP_BY:
        raise ListingError(f"group_by: {group_by!r} is not one of {', '.join(GROUP_BY)}")
    groups: dict[str, dict[str, float]] = {}
    members: dict[str, set[str]] = {}
    for job in jobs.values():
        if not visible(principal, job):
            continue
        if group_by in ("user", "account"):
            parts = [(job.who.get(group_by, ""), job.sums)]
        else:
            parts = [(rack if group_by == "rack" else zone_of_rack.get(rack, ""), s)
                     for rack, s in job.by_rack.items()]
        for key, s in parts:
            g = groups.setdefault(key, dict.fromkeys(_SUM_KEYS, 0.0))
            for k in _SUM_KEYS:
                g[k] += s[k]
            members.setdefault(key, set()).add(job.job_id)
    return [
        {group_by: key, "jobs": len(members[key]), **figures(groups[key])}
        for key in sorted(groups)
    ]


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    try:
        value = int(raw)
    except ValueError:
        raise ListingError(f"limit: {raw[:20]!r} is not a whole number") from None
    if not 1 <= value <= MAX_LIMIT:
        raise ListingError(f"limit: {value} is outside 1..{MAX_LIMIT}")
    return value
