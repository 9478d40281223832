"""Every answer InfluxDB can give to a write has one tested behaviour (see collector/store.py).

A real InfluxDB 1.x gives the answers it can be made to give: 204, partial writes (retention,
field type conflict, unparseable line), 413 (max-body-size), timeouts (a paused server),
connection refused (a stopped server). A local front (tests/influx_front.py) gives
the rest (429/503 with Retry-After, 500/502, InfluxDB 2.x bodies) and forwards to the real
server, so the data that finally arrives is checked in the real database.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
import urllib.parse
import urllib.request
from typing import Any

import pytest

from gridwatt.collector.store import StoreUnavailable, parse_dropped, parse_retry_after
from gridwatt.demo_harness.influxdb import LocalInfluxDB
from tests.collector.helpers import influx_post, metric, store_for
from tests.conftest import first_row, influx_query
from tests.influx_front import InfluxFront, Reply

pytestmark = pytest.mark.integration  # see tests/conftest.py

NOW_NS = time.time_ns()


def lines(n: int, t0: int = NOW_NS - 10**12, tag: str = "a", pad: int = 0) -> list[str]:
    """n distinct points of measurement m (one second apart), each with field v = its index."""
    extra = f",pad={'x' * pad}" if pad else ""
    return [f"m,{tag}={i}{extra} v={float(i)} {t0 + i * 10**9}" for i in range(n)]


def count_sum(db_url: str, database: str, measurement: str = "m") -> tuple[int, float]:
    (res,) = influx_query(db_url, database, f"SELECT count(v), sum(v) FROM {measurement}")
    row = first_row(res)
    return row.get("count", 0), row.get("sum", 0.0)


def test_parsers() -> None:
    assert parse_dropped('{"error":"partial write: points beyond retention policy dropped=2"}') == 2
    assert parse_dropped('{"error":"unable to parse \'x\': invalid field format"}') is None
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0  # in the past
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


async def test_204_stores_every_line(influxdb: LocalInfluxDB, database: str) -> None:
    async with store_for(influxdb.url, database) as store:
        result = await store.write_lines(lines(50))
    assert (result.lines, result.rejected, result.retries) == (50, {}, 0)
    assert count_sum(influxdb.url, database) == (50, float(sum(range(50))))


async def test_partial_write_beyond_retention_rejects_only_the_old_points(
    influxdb: LocalInfluxDB, database: str
) -> None:
    influx_post(influxdb.url, f"CREATE DATABASE {database} WITH DURATION 1h")
    new = lines(6, t0=NOW_NS - 10 * 60 * 10**9)
    old = lines(3, t0=NOW_NS - 3 * 3600 * 10**9, tag="old")
    batch = [new[0], old[0], new[1], new[2], old[1], new[3], new[4], old[2], new[5]]
    async with store_for(influxdb.url, database) as store:
        result = await store.write_lines(batch)
        assert metric(store, "influxdb_points_rejected_total", status="400") == 3
    assert sorted(result.rejected) == [1, 4, 7]
    for status, reason in result.rejected.values():
        assert status == 400
        assert "partial write: points beyond retention policy" in reason
    assert count_sum(influxdb.url, database) == (6, 15.0)


async def test_field_type_conflict_and_unparseable_lines_are_rejected_alone(
    influxdb: LocalInfluxDB, database: str
) -> None:
    async with store_for(influxdb.url, database) as store:
        await store.write_lines(lines(1))  # v is a float field from now on
        batch = lines(8)
        batch[2] = f"m,a=2 v=7i {NOW_NS - 10**12 + 2 * 10**9}"  # integer: field type conflict
        batch[5] = "m,a=5 v=this is not line protocol"
        result = await store.write_lines(batch)
    assert sorted(result.rejected) == [2, 5]
    assert "field type conflict" in result.rejected[2][1]
    assert "unable to parse" in result.rejected[5][1]
    # the other six are stored, and nothing was written twice (a,i tags are the series)
    assert count_sum(influxdb.url, database) == (6, 0.0 + 1 + 3 + 4 + 6 + 7)


async def test_413_splits_the_request_and_stays_small_and_rejects_a_point_too_large_alone(
    tmp_path: Any, database: str
) -> None:
    with LocalInfluxDB(tmp_path / "influx413", max_body_size=4000) as db:
        async with store_for(db.url, database) as store:
            batch = lines(64, pad=40)  # ~90 bytes a line: 64 lines ~ 5.8 kB > 4 kB
            result = await store.write_lines(batch)
            assert result.rejected == {} and result.retries >= 1
            assert metric(store, "influxdb_write_splits_total", reason="http_413") >= 1
            assert store._chunk_lines == 32
            splits = metric(store, "influxdb_write_splits_total", reason="http_413")
            # later writes go out small at once: no new 413
            result = await store.write_lines(lines(64, pad=40, tag="b"))
            assert result.rejected == {}
            assert metric(store, "influxdb_write_splits_total", reason="http_413") == splits
            # one point larger than the server takes: rejected alone, never retried forever
            huge = lines(5, tag="c")
            huge[3] = f"m,c=3,pad={'y' * 5000} v=3.0 {NOW_NS - 10**12 + 3 * 10**9}"
            result = await store.write_lines(huge)
            assert list(result.rejected) == [3]
            assert result.rejected[3][0] == 413 and "too large" in result.rejected[3][1]
            assert store.serving and store._chunk_lines == 32  # one huge point does not shrink requests
        assert count_sum(db.url, database) == (64 + 64 + 4, 2 * sum(range(64)) + 0 + 1 + 2 + 4)


async def test_429_and_503_honour_retry_after_in_seconds_and_as_http_date(
    influxdb: LocalInfluxDB, database: str
) -> None:
    def at_2s(body: str) -> Reply:  # whole seconds: 1-2 s from the time of the answer
        return Reply(429, {"Retry-After": email.utils.formatdate(time.time() + 2, usegmt=True)})

    script: list[Any] = [Reply(503, {"Retry-After": "1"}), at_2s]
    async with InfluxFront(influxdb.url, script) as front, store_for(front.url, database) as store:
        result = await store.write_lines(lines(10))
        assert result.rejected == {} and result.retries == 2
        assert metric(store, "influxdb_write_retries_total", reason="http_503") == 1
        assert metric(store, "influxdb_write_retries_total", reason="http_429") == 1
        t = [w.t for w in front.writes]
    assert [w.status for w in front.writes] == [503, 429, 204]
    assert t[1] - t[0] >= 0.95  # "1" second
    assert t[2] - t[1] >= 0.9  # the HTTP-date, 1-2 s ahead when it was sent
    assert count_sum(influxdb.url, database) == (10, 45.0)


async def test_retry_after_beyond_retry_max_delay_defers_to_the_agents_and_holds_off(
    influxdb: LocalInfluxDB, database: str
) -> None:
    async with InfluxFront(influxdb.url, [Reply(503, {"Retry-After": "120"})]) as front, store_for(
        front.url, database, retry_max_delay_s=10
    ) as store:
        with pytest.raises(StoreUnavailable) as err:
            await store.write_lines(lines(3))
        assert err.value.retry_after_s == 120.0 and err.value.reason == "http_503"
        assert not store.serving and store.retry_after_s() > 100
        assert metric(store, "influxdb_up") == 0
        # held off: the next write fails fast without asking InfluxDB
        with pytest.raises(StoreUnavailable) as err:
            await store.write_lines(lines(3))
        assert err.value.reason == "unhealthy" and err.value.retry_after_s is not None
        assert err.value.retry_after_s > 100
        assert len(front.writes) == 1


async def test_5xx_retry_with_exponential_backoff_and_full_jitter_then_unavailable(
    influxdb: LocalInfluxDB, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[float, float]] = []

    def uniform(a: float, b: float) -> float:
        asked.append((a, b))
        return b / 2

    monkeypatch.setattr("gridwatt.collector.store.random.uniform", uniform)
    cfg = {"write_attempts": 4, "retry_base_s": 0.01, "health_probe_interval_s": 0.05}
    script = [Reply(500, body='{"error":"engine: cache full"}'), Reply(502), Reply(500)]
    async with InfluxFront(influxdb.url, script) as front, store_for(front.url, database, **cfg) as store:
        result = await store.write_lines(lines(4))
        assert result.retries == 3 and result.rejected == {}
        assert asked == [(0, 0.01), (0, 0.02), (0, 0.04)]  # full jitter: uniform(0, base * 2**k)
        assert metric(store, "influxdb_write_retries_total", reason="http_5xx") == 3
        assert [w.status for w in front.writes] == [500, 502, 500, 204]
        # four failures in a row: not stored, the store turns unhealthy, nothing is dropped
        front.script = [Reply(503)] * 4
        with pytest.raises(StoreUnavailable) as err:
            await store.write_lines(lines(4, tag="b"))
        assert "after 4 attempt(s)" in str(err.value) and not store.serving
        assert len(front.writes) == 8
        # the probe (an empty write) finds InfluxDB well again
        deadline = time.monotonic() + 30
        while not store.serving and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert store.serving and front.writes[-1].body == ""
        await store.write_lines(lines(4, tag="b"))
    assert count_sum(influxdb.url, database) == (8, 12.0)


async def test_timeouts_retry_then_unavailable_and_a_probe_brings_the_store_back(
    tmp_path: Any, database: str
) -> None:
    with LocalInfluxDB(tmp_path / "influx-slow") as db:
        cfg = {"timeout_s": 0.5, "write_attempts": 2, "retry_base_s": 0.01, "health_probe_interval_s": 0.1}
        async with store_for(db.url, database, **cfg) as store:
            db.pause()
            try:
                with pytest.raises(StoreUnavailable) as err:
                    await store.write_lines(lines(5))
                assert err.value.reason == "timeout"
                assert metric(store, "influxdb_write_retries_total", reason="timeout") == 1
                assert not store.serving and "timeout" in store.health_reason
            finally:
                db.resume()
            deadline = time.monotonic() + 60
            while not store.serving and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert store.serving
            assert (await store.write_lines(lines(5))).rejected == {}
        assert count_sum(db.url, database) == (5, 10.0)


async def test_connection_refused_is_unavailable(tmp_path: Any, database: str) -> None:
    with LocalInfluxDB(tmp_path / "influx-down") as db:
        async with store_for(db.url, database, write_attempts=2, retry_base_s=0.01) as store:
            db.stop()
            with pytest.raises(StoreUnavailable) as err:
                await store.write_lines(lines(2))
            assert err.value.reason == "connection"
            assert metric(store, "influxdb_write_retries_total", reason="connection") == 1


async def test_401_and_403_keep_the_data_and_raise_an_alarm(tmp_path: Any) -> None:
    admin = ("admin", "admin-pw")
    with LocalInfluxDB(tmp_path / "influx-auth", auth_enabled=True) as db:
        influx_post(db.url, "CREATE USER admin WITH PASSWORD 'admin-pw' WITH ALL PRIVILEGES")
        influx_post(db.url, "CREATE DATABASE d", auth=admin)
        influx_post(db.url, "CREATE USER reader WITH PASSWORD 'reader-pw'", auth=admin)
        influx_post(db.url, "GRANT READ ON d TO reader", auth=admin)
        cfg = {"create_database": False, "health_probe_interval_s": 0.1}
        async with store_for(db.url, "d", username="reader", password="wrong", **cfg) as store:
            with pytest.raises(StoreUnavailable) as err:
                await store.write_lines(lines(2))
            assert err.value.reason == "auth" and "HTTP 401" in str(err.value)
            assert metric(store, "influxdb_auth_failures_total") == 1
            assert metric(store, "influxdb_auth_failing") == 1
        async with store_for(db.url, "d", username="reader", password="reader-pw", **cfg) as store:
            with pytest.raises(StoreUnavailable) as err:
                await store.write_lines(lines(2))
            assert err.value.reason == "auth" and "HTTP 403" in str(err.value)
            assert "not authorized to write" in str(err.value)
            assert (metric(store, "influxdb_auth_failures_total"), metric(store, "influxdb_up")) == (1, 0)
            # a fast fail while unhealthy: no second request, no second alarm
            with pytest.raises(StoreUnavailable):
                await store.write_lines(lines(2))
            assert metric(store, "influxdb_auth_failures_total") == 1
            # the operator grants the privilege: the probe sees it, the data goes in
            influx_post(db.url, "GRANT ALL ON d TO reader", auth=admin)
            deadline = time.monotonic() + 30
            while not store.serving and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert store.serving and metric(store, "influxdb_auth_failing") == 0
            assert (await store.write_lines(lines(2))).rejected == {}
        params = urllib.parse.urlencode({"db": "d", "q": "SELECT count(v) FROM m", "u": "admin",
                                         "p": "admin-pw"})
        with urllib.request.urlopen(f"{db.url}/query?{params}", timeout=30) as resp:
            assert b'"columns":["time","count"],"values":[["1970-01-01T00:00:00Z",2]]' in resp.read()


async def test_influxdb_2_answers_map_to_the_same_behaviours() -> None:
    """The v2 write path (influxdb-client) against a front with InfluxDB 2.x's bodies."""

    def answer(body: str) -> Reply | None:
        if "BAD" in body:
            return Reply(400, {"Content-Type": "application/json"},
                         '{"code":"invalid","message":"unable to parse \'BAD\': missing fields"}')
        return None

    cfg = {"version": 2, "token": "t0ken", "org": "o", "bucket": "b", "retry_base_s": 0.01}
    async with InfluxFront(responder=answer) as front, store_for(front.url, "gridwatt", **cfg) as store:
        batch = [*lines(5)[:3], "BAD", *lines(5)[3:]]
        result = await store.write_lines(batch)
        assert list(result.rejected) == [3]
        assert result.rejected[3] == (400, "InfluxDB refused the point (HTTP 400): unable to parse 'BAD': "
                                           "missing fields")
        assert all(w.path == "/api/v2/write" for w in front.writes)
        front.script = [Reply(503, {"Retry-After": "0"}), Reply(204)]
        assert (await store.write_lines(lines(2))).retries == 1
        front.script = [Reply(401, body='{"code":"unauthorized","message":"unauthorized access"}')]
        with pytest.raises(StoreUnavailable) as err:
            await store.write_lines(lines(2))
        assert err.value.reason == "auth" and "unauthorized access" in str(err.value)
        assert metric(store, "influxdb_auth_failing") == 1
