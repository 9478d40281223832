"""The in-memory job index (collector/job_index.py) against a real InfluxDB: it answers what a
direct read answers, follows new windows noted by ingest, and falls back beyond its bound."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gridwatt.collector.config import InfluxConfig
from gridwatt.collector.job_index import HOUR_NS, JobIndex
from gridwatt.collector.listings import scan_jobs
from gridwatt.collector.rollup import job_window_lines
from gridwatt.collector.store import InfluxStore
from gridwatt.demo_harness.influxdb import LocalInfluxDB

T0 = 1_654_041_600 * 10**9  # 2022-06-01T00:00:00Z
MIN_NS = 60 * 10**9


@pytest.fixture
async def store(influxdb: LocalInfluxDB, database: str) -> AsyncIterator[InfluxStore]:
    s = InfluxStore(InfluxConfig(url=influxdb.url, database=database))
    await s.start()
    try:
        yield s
    finally:
        await s.close()


def windows(job: str, first_min: int, minutes: int, joules: float, **who: str) -> dict[tuple[int, str], Any]:
    out = {}
    for m in range(first_min, first_min + minutes):
        t = T0 + m * MIN_NS
        out[(t, job)] = {"e": joules, "f": joules * 1.25, "c": joules * 1.25 / 3.6e6 * 400, "ce": 0.0,
                         "d": 60.0, "u": 60.0 * 50, "i": 0.0, "ie": 0.0, "n": 1, "end_ns": t + MIN_NS, **who}
    return out


async def test_index_matches_a_direct_read_and_follows_noted_windows(store: InfluxStore) -> None:
    await store.write_lines(job_window_lines("n1", "r1", windows("a", 0, 150, 1000.0, user="alice",
                                                                    account="physics")))
    await store.write_lines(job_window_lines("n2", "r2", windows("b", 30, 60, 2000.0, user="bob")))
    index = JobIndex(store)
    await index.fresh()
    for since, until in ((None, None), (T0, T0 + 2 * HOUR_NS), (T0 + HOUR_NS, T0 + 3 * HOUR_NS)):
        got = index.jobs(since, until)
        direct = await scan_jobs(store, since, until)
        assert sorted(got) == sorted(direct)
        for job in got:
            assert got[job].sums == pytest.approx(direct[job].sums, rel=1e-12)
            assert (got[job].end_ns, got[job].who, got[job].nodes) == (
                direct[job].end_ns, direct[job].who, direct[job].nodes)
    assert index.jobs(None, None)["a"].sums["e"] == pytest.approx(150 * 1000.0)
    assert index.jobs(T0 + 2 * HOUR_NS, None)["a"].sums["e"] == pytest.approx(30 * 1000.0)
    assert index.jobs(None, None)["a"].first_window_ns == T0
    loads = index.loads
    await index.fresh()  # nothing noted, nothing due: no read
    assert index.loads == loads
    # more windows of a, and a new job: noted by ingest, read before the next answer
    await store.write_lines(job_window_lines("n1", "r1", windows("a", 150, 30, 1000.0, user="alice")))
    await store.write_lines(job_window_lines("n3", "r1", windows("c", 170, 5, 500.0, user="carol")))
    index.note("n1", "r1", T0 + 150 * MIN_NS, T0 + 180 * MIN_NS)
    await index.fresh()
    jobs = index.jobs(None, None)
    assert jobs["a"].sums["e"] == pytest.approx(180 * 1000.0)
    assert jobs["a"].end_ns == T0 + 180 * MIN_NS
    assert jobs["c"].who["user"] == "carol" and jobs["c"].nodes == {"n3"}
    assert jobs["b"].sums["e"] == pytest.approx(60 * 2000.0)  # hours not noted: kept as they were
    # after the update, ranges that hold a job whole, cut it, or miss it still answer what InfluxDB does
    for since, until in ((T0 + 2 * HOUR_NS, None), (T0 + HOUR_NS, T0 + 2 * HOUR_NS), (T0, T0 + HOUR_NS),
                         (T0 + 3 * HOUR_NS, None)):
        for per_rack in (False, True):
            got = index.jobs(since, until, per_rack)
            direct = await scan_jobs(store, since, until)
            assert sorted(got) == sorted(direct)
            for job in got:
                assert got[job].sums == pytest.approx(direct[job].sums, rel=1e-12)
                assert got[job].end_ns == direct[job].end_ns
    assert index.jobs(T0 + 2 * HOUR_NS, None)["a"].sums["e"] == pytest.approx(60 * 1000.0)


async def test_beyond_its_bound_the_index_holds_the_newest_hours(store: InfluxStore) -> None:
    await store.write_lines(job_window_lines("n1", "r1", windows("a", 0, 240, 10.0)))  # 4 hours
    index = JobIndex(store, max_buckets=2)
    await index.fresh()
    assert index.buckets == 2 and index.complete_from_ns == T0 + 2 * HOUR_NS
    assert not index.covers(None) and not index.covers(T0 + HOUR_NS) and index.covers(T0 + 2 * HOUR_NS)
    assert index.jobs(T0 + 2 * HOUR_NS, None)["a"].sums["e"] == pytest.approx(120 * 10.0)
