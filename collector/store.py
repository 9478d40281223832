"""InfluxDB: writes line protocol (collector/writers.py: v1 or v2 write API), reads with InfluxQL.

InfluxQL (``/query``) is served by InfluxDB 1.x, 2.x (with a DBRP mapping) and 3.x,
so reads are the same for all.

Every answer to a write has one behaviour (collector/README.md has the table):

* 2xx: stored.
* 400/422 (bad points; 1.x "partial write ... dropped=N"): only the bad points are
  rejected. A request with bad points is halved until each bad line is found alone (good
  points are written again, which is idempotent), so ``WriteResult.rejected`` names exactly
  the lines InfluxDB refused, with its reason. Never retried as a whole.
* 413: the request is halved and retried, and later requests stay that small; a single line
  that is still too large is rejected.
* 401/403 (and other 4xx such as 404 "database not found"): nothing is dropped; the write
  raises StoreUnavailable at once and an alarm is raised (error log, metrics
  ``influxdb_auth_failures_total`` and ``influxdb_auth_failing``).
* 429/503 with Retry-After (seconds or HTTP-date): waited for if it is at most
  ``retry_max_delay_s``, else the write raises StoreUnavailable carrying that delay.
* other 5xx, 408, timeouts, connection errors: retried ``write_attempts`` times with
  exponential backoff and full jitter, then StoreUnavailable.

With ``group_commit`` (the default) :meth:`InfluxStore.write_lines` hands its lines to
collector/group_commit.py, which writes many callers' lines in one request and gives each
caller the answer above for its own lines (:meth:`WriteResult.share`).

StoreUnavailable marks the store unhealthy: further writes fail fast (no request) until a
probe (an empty write, which checks reachability, credentials and the database) succeeds;
listeners (gRPC health, ``/healthz``) are told of every change. There is no time-based
give-up anywhere: the agents keep unacknowledged samples and resend them.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from gridwatt.collector.config import InfluxConfig
from gridwatt.collector.group_commit import GroupCommit
from gridwatt.collector.metrics import StoreMetrics
from gridwatt.collector.queries import quote_ident
from gridwatt.collector.writers import Answer, LineWriter, make_writer
from gridwatt.configfile import read_secret

log = logging.getLogger("gridwatt.collector.store")


class StoreUnavailable(Exception):
    """InfluxDB could not store the data now; try again later (maps to gRPC UNAVAILABLE).

    ``retry_after_s`` is the suggested wait before trying again; ``reason`` a short label
    for metrics (``timeout``, ``connection``, ``http_503``, ``auth``, ``unhealthy`` ...).
    """

    def __init__(self, message: str, retry_after_s: float | None = None, reason: str = "unavailable"):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason


class StoreRejected(Exception):
    """InfluxDB refused the data as bad (HTTP 400/422); resending will not help."""


class QueryError(Exception):
    """An InfluxQL query failed; the message carries InfluxDB's error."""


#: What one retry or split of a request was: ``retry`` (transient failure), ``split_413`` (too large),
#: ``split_bad`` (400/422: halved to find the bad lines).
RetryKind = str


@dataclass
class WriteResult:
    """What became of the lines given to :meth:`InfluxStore.write_lines`.

    Every line not in ``rejected`` is stored. ``rejected`` maps a line's index to InfluxDB's
    HTTP status and reason for refusing it. ``retries`` counts requests tried again or split.
    ``events``: each retry or split with the indexes of the lines its request held (what
    :meth:`share` needs to give each caller of a group commit its own ``retries``).
    """

    lines: int = 0
    rejected: dict[int, tuple[int, str]] = field(default_factory=dict)
    retries: int = 0
    events: list[tuple[RetryKind, Sequence[int]]] = field(default_factory=list, repr=False)

    def note(self, kind: RetryKind, indexes: Sequence[int]) -> None:
        """One request of ``indexes`` was tried again or split."""
        self.retries += 1
        self.events.append((kind, indexes))

    def share(self, spans: Sequence[tuple[int, int]]) -> list[WriteResult]:
        """This result (of several callers' lines, one after another) cut into one per caller.

        ``spans``: each caller's (first line, line count), ascending and adjacent. A caller gets the
        rejections of its own lines (its own indexes) and counts a retry or 413 split of every request
        that held any of its lines, and a 400/422 split only where one of its own lines was refused
        (a bad line of one caller costs the others nothing but the idempotent rewrite).
        """
        starts = [first for first, _ in spans]
        parts = [WriteResult(lines=n) for _, n in spans]
        for index, why in self.rejected.items():
            k = bisect.bisect_right(starts, index) - 1
            parts[k].rejected[index - starts[k]] = why
        for kind, indexes in self.events:
            held = indexes if isinstance(indexes, range) else set(indexes)
            for k in _owners(starts, spans, indexes):
                first, n = spans[k]
                if kind == "split_bad" and not any(first + r in held for r in parts[k].rejected):
                    continue
                parts[k].retries += 1
                if isinstance(indexes, range):
                    mine: Sequence[int] = range(max(indexes.start, first) - first,
                                                min(indexes.stop, first + n) - first)
                else:
                    mine = [i - first for i in indexes if first <= i < first + n]
                parts[k].events.append((kind, mine))
        return parts


def _owners(starts: list[int], spans: Sequence[tuple[int, int]], indexes: Sequence[int]) -> list[int]:
    """The callers (positions in ``spans``) that own any of ``indexes``."""
    if isinstance(indexes, range):  # contiguous: the callers whose spans meet it
        if not indexes:
            return []
        lo = bisect.bisect_right(starts, indexes.start) - 1
        hi = bisect.bisect_right(starts, indexes.stop - 1) - 1
        return list(range(lo, hi + 1))
    return sorted({bisect.bisect_right(starts, i) - 1 for i in indexes})


HealthListener = Callable[[bool, str], Awaitable[None]]

_DROPPED = re.compile(r"dropped=(\d+)")


def parse_dropped(body: str) -> int | None:
    """The N of InfluxDB's ``partial write: ... dropped=N``, or None where the body has none."""
    m = _DROPPED.search(body)
    return int(m.group(1)) if m else None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _error_text(body: str) -> str:
    """InfluxDB's ``{"error": ...}`` (1.x) or ``{"message": ...}`` (2.x) text, else the body; shortened."""
    with contextlib.suppress(ValueError):
        doc = json.loads(body)
        if isinstance(doc, dict):
            for key in ("error", "message"):
                if isinstance(doc.get(key), str):
                    return str(doc[key])[:500]
    return body.strip()[:500]


class InfluxStore:
    """One InfluxDB connection pool for writes and InfluxQL reads, and InfluxDB's health."""

    def __init__(self, config: InfluxConfig, metrics: StoreMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or StoreMetrics()
        self._session: aiohttp.ClientSession | None = None
        self._writer: LineWriter | None = None
        self._headers: dict[str, str] = {}
        password = read_secret(config.password, config.password_file, "influxdb password")
        token = read_secret(config.token, config.token_file, "influxdb token")
        if token:
            self._headers["Authorization"] = f"Token {token}"
        if config.username:
            basic = base64.b64encode(f"{config.username}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {basic}"
        self._token = token
        self._chunk_lines = config.write_batch_lines
        self.serving = True
        self.health_reason = ""
        self._retry_at = 0.0  # monotonic time before which no probe is sent
        self._listeners: list[HealthListener] = []
        self._probe_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._database_pending = False
        self._last_ok = time.monotonic()  # last successful write or probe
        #: write_lines goes through it (config.group_commit); None: each call writes on its own
        self.group: GroupCommit[WriteResult] | None = None
        if config.group_commit:
            self.group = GroupCommit(
                self._write_now, WriteResult.share, _each_caller, _closing,
                max_lines=lambda: self._chunk_lines, max_bytes=config.group_commit_max_bytes,
                max_in_flight=config.group_commit_max_in_flight, linger_s=config.group_commit_linger_s,
                on_group=self._count_group,
            )

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        self._session = aiohttp.ClientSession(
            base_url=self.config.url.rstrip("/") + "/", timeout=timeout, headers=self._headers,
        )
        self._writer = make_writer(self.config, self._session, self._token)
        if self.config.version != 2 and self.config.create_database:
            self._database_pending = True
            try:
                await self._create_database()
            except QueryError as exc:
                # Serve anyway: health says NOT_SERVING, agents keep their samples, and the probe
                # creates the database once InfluxDB answers (as after any later outage).
                log.warning("InfluxDB %s: cannot create database %s yet (%s); serving, and answering "
                            "agents UNAVAILABLE until it answers", self.config.url, self.config.database, exc)
                await self._set_health(False, str(exc))
        if self.config.health_check_interval_s > 0:
            self._watch_task = asyncio.create_task(self._watch_while_serving())

    async def _create_database(self) -> None:
        await self.query(f"CREATE DATABASE {quote_ident(self.config.database)}", method="POST")
        self._database_pending = False

    async def _watch_while_serving(self) -> None:
        """While healthy, probe every health_check_interval_s when no write succeeded meanwhile, so
        health turns NOT_SERVING in an outage even when no agent is writing."""
        while True:
            await asyncio.sleep(self.config.health_check_interval_s)
            if not self.serving or time.monotonic() - self._last_ok < self.config.health_check_interval_s:
                continue
            ok, reason, retry_after = await self.probe()
            if ok:
                self._last_ok = time.monotonic()
            elif self.serving:
                await self._set_health(False, reason, retry_after)

    def _count_group(self, callers: int, lines: int) -> None:
        self.metrics.group_writes.inc()
        self.metrics.group_callers.inc(callers)

    async def close(self) -> None:
        if self.group is not None:
            await self.group.close()
        for task in (self._probe_task, self._watch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._probe_task = self._watch_task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._writer is not None:
            await self._writer.close()
            self._writer = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("InfluxStore.start() was not called")
        return self._session

    # -- health ---------------------------------------------------------------------------

    def add_health_listener(self, listener: HealthListener) -> None:
        """``await listener(serving, reason)`` on every change of health."""
        self._listeners.append(listener)

    def retry_after_s(self) -> float:
        """The wait to suggest to an agent whose batch was not stored."""
        return max(self._retry_at - time.monotonic(), self.config.health_probe_interval_s)

    async def _set_health(self, serving: bool, reason: str, retry_after_s: float | None = None) -> None:
        if not serving:
            wait = retry_after_s if retry_after_s is not None else self.config.health_probe_interval_s
            self._retry_at = max(self._retry_at, time.monotonic() + wait)
        changed = serving != self.serving
        self.serving, self.health_reason = serving, reason
        if not changed:
            return
        self.metrics.up.set(1 if serving else 0)
        if serving:
            self.metrics.auth_failing.set(0)
            log.info("InfluxDB %s accepts writes again", self.config.url)
        else:
            log.warning("InfluxDB %s unavailable: %s; answering agents UNAVAILABLE", self.config.url, reason)
            if self._probe_task is None or self._probe_task.done():
                self._probe_task = asyncio.create_task(self._probe_until_serving())
        for listener in list(self._listeners):
            await listener(serving, reason)

    async def note_unreachable(self, reason: str) -> None:
        """A read found InfluxDB unreachable: unhealthy (and probing) as after a failed write."""
        await self._set_health(False, reason)

    async def _probe_until_serving(self) -> None:
        while not self.serving:
            await asyncio.sleep(max(self._retry_at - time.monotonic(), self.config.health_probe_interval_s))
            if self.serving:
                return
            if self._database_pending:
                with contextlib.suppress(QueryError):
                    await self._create_database()
                    log.info("InfluxDB %s answers: database %s created", self.config.url,
                             self.config.database)
            ok, reason, retry_after = await self.probe()
            if ok:
                self._retry_at = 0.0
                self._last_ok = time.monotonic()
                await self._set_health(True, "")
            else:
                await self._set_health(False, reason, retry_after)

    async def probe(self) -> tuple[bool, str, float | None]:
        """An empty write: (accepts writes, why not, Retry-After). Checks reachability, auth, database."""
        ans = await self._request(b"")
        if 200 <= ans.status < 300 or (self.config.version == 2 and ans.status == 400):
            return True, "", None
        if ans.status == 0:
            return False, ans.error, None
        retry_after = parse_retry_after(ans.headers.get("retry-after")) if ans.status in (429, 503) else None
        return False, f"HTTP {ans.status}: {_error_text(ans.body)}", retry_after

    # -- writes ---------------------------------------------------------------------------

    async def write_lines(self, lines: list[str]) -> WriteResult:
        """Write lines; returns which InfluxDB refused (see the module docstring).

        Raises StoreUnavailable when nothing more can be stored now (all lines not yet written
        must be resent; resending written ones is harmless, as writes are idempotent).

        With ``group_commit`` the lines ride in one request with other callers' lines
        (collector/group_commit.py); the answer is the same as for these lines alone: their own
        indexes in ``rejected``, StoreUnavailable when the write that held them failed.
        """
        if not lines:
            return WriteResult()
        if not self.serving:
            raise StoreUnavailable(f"InfluxDB unavailable: {self.health_reason}", self.retry_after_s(),
                                   "unhealthy")
        if self.group is not None:
            return await self.group.submit(lines)
        return await self._write_now(lines)

    async def _write_now(self, lines: list[str]) -> WriteResult:
        """write_lines without group commit: these lines, in requests of at most ``_chunk_lines``."""
        result = WriteResult(lines=len(lines))
        if not self.serving:
            raise StoreUnavailable(f"InfluxDB unavailable: {self.health_reason}", self.retry_after_s(),
                                   "unhealthy")
        try:
            for rp, indexes in self._by_retention_policy(lines).items():
                whole = len(indexes) == len(lines)
                part = lines if whole else [lines[k] for k in indexes]
                part_result = WriteResult(lines=len(part))
                i = 0
                while i < len(part):
                    hi = min(len(part), i + self._chunk_lines)
                    await self._write_range(part, i, hi, part_result, rp)
                    i = hi
                result.retries += part_result.retries
                for kind, span in part_result.events:
                    result.events.append((kind, span if whole else [indexes[k] for k in span]))
                for k, why in part_result.rejected.items():
                    result.rejected[indexes[k]] = why
        except StoreUnavailable as exc:
            await self._set_health(False, str(exc), exc.retry_after_s)
            raise
        self._last_ok = time.monotonic()
        if not self.serving:
            await self._set_health(True, "")
        return result

    def measurement(self, name: str) -> str:
        """``name`` quoted for InfluxQL's FROM, qualified with its retention policy where it has one."""
        rp = self.config.retention_policy_of(name)
        return (f"{quote_ident(rp)}." if rp else "") + quote_ident(name)

    def _by_retention_policy(self, lines: list[str]) -> dict[str, list[int]]:
        """Line indexes grouped by the retention policy of their measurement (one group if none set)."""
        if not self.config.retention_policies:
            return {self.config.retention_policy: list(range(len(lines)))}
        groups: dict[str, list[int]] = {}
        for k, line in enumerate(lines):
            name = line.split(",", 1)[0].split(" ", 1)[0]
            groups.setdefault(self.config.retention_policy_of(name), []).append(k)
        return groups

    async def _write_range(
        self, lines: list[str], lo: int, hi: int, result: WriteResult, rp: str | None = None
    ) -> bool:
        """Write lines[lo:hi], splitting as needed; False if InfluxDB answered 413 to any part."""
        n = hi - lo
        status, body = await self._post(lines[lo:hi], result, rp, lo)
        if 200 <= status < 300:
            return True
        if status == 413 and n == 1:
            result.rejected[lo] = (413, "the point is too large for one InfluxDB request (HTTP 413)")
            self.metrics.points_rejected.labels(status="413").inc()
            return False
        if status != 413 and (n == 1 or parse_dropped(body) == n):
            reason = f"InfluxDB refused the point (HTTP {status}): {_error_text(body)}"
            for k in range(lo, hi):
                result.rejected[k] = (status, reason)
            self.metrics.points_rejected.labels(status=str(status)).inc(n)
            return True
        # Split: too large (413), or some of the lines are bad and we must find which.
        result.note("split_413" if status == 413 else "split_bad", range(lo, hi))
        self.metrics.write_splits.labels(reason=f"http_{status}").inc()
        mid = lo + n // 2
        left = await self._write_range(lines, lo, mid, result, rp)
        right = await self._write_range(lines, mid, hi, result, rp)
        if status != 413:
            return left and right
        if left and right and mid - lo < self._chunk_lines:
            # the request was too large as a whole (not for one huge point): stay this small
            self._chunk_lines = mid - lo
            log.warning("InfluxDB answered 413 to %d lines; at most %d lines per request from now",
                        n, self._chunk_lines)
        return False

    async def _post(
        self, chunk: list[str], result: WriteResult, rp: str | None = None, first: int = 0
    ) -> tuple[int, str]:
        """One request (of lines ``first``...), retried on transient failures; returns (status, body)
        for 2xx/400/413/422."""
        body = "\n".join(chunk).encode()
        attempt = 0
        while True:
            ans = await self._request(body, rp)
            status = ans.status
            if 200 <= status < 300 or status in (400, 413, 422):
                return status, ans.body
            what = ans.error if status == 0 else f"HTTP {status}: {_error_text(ans.body)}"
            if status in (401, 403):
                self.metrics.auth_failures.inc()
                self.metrics.auth_failing.set(1)
                log.error("ALARM: InfluxDB %s refused our credentials (%s); samples are kept by the agents "
                          "until this is fixed", self.config.url, what)
                raise StoreUnavailable(f"InfluxDB refused the credentials: {what}", reason="auth")
            if 400 <= status < 500 and status not in (408, 429):
                log.error("ALARM: InfluxDB %s answered %s; samples are kept by the agents",
                          self.config.url, what)
                raise StoreUnavailable(f"InfluxDB cannot take writes: {what}", reason=f"http_{status}")
            label = ("timeout" if ans.timeout else "connection") if status == 0 else (
                f"http_{status}" if status in (429, 503) else "http_5xx")
            hinted = parse_retry_after(ans.headers.get("retry-after")) if status in (429, 503) else None
            attempt += 1
            if hinted is not None:
                delay = hinted
            else:
                cap = min(self.config.retry_max_delay_s, self.config.retry_base_s * 2 ** (attempt - 1))
                delay = random.uniform(0, cap)
            if attempt >= self.config.write_attempts or delay > self.config.retry_max_delay_s:
                raise StoreUnavailable(
                    f"InfluxDB write failed after {attempt} attempt(s): {what}",
                    retry_after_s=hinted, reason=label,
                )
            result.note("retry", range(first, first + len(chunk)))
            self.metrics.write_retries.labels(reason=label).inc()
            log.info("InfluxDB write %s; retry %d in %.2f s", what, attempt, delay)
            await asyncio.sleep(delay)

    async def _request(self, body: bytes, rp: str | None = None) -> Answer:
        """Send one write request; never raises for HTTP or network failures."""
        if self._writer is None:
            raise RuntimeError("InfluxStore.start() was not called")
        t0 = time.perf_counter()
        try:
            return await self._writer.post(body, rp)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            return Answer(0, error=f"timeout after {self.config.timeout_s:g} s ({type(exc).__name__})",
                          timeout=True)
        except (aiohttp.ClientError, OSError) as exc:
            return Answer(0, error=f"{type(exc).__name__}: {exc}")
        finally:
            self.metrics.write_duration.observe(time.perf_counter() - t0)

    async def query(self, q: str, method: str = "GET") -> list[dict[str, Any]]:
        """Run InfluxQL; return the ``results`` list (one entry per statement); ns epoch times."""
        params = {"q": q, "db": self.config.database, "epoch": "ns"}
        if self.config.retention_policy:
            params["rp"] = self.config.retention_policy
        try:
            if method == "POST":
                cm = self.session.post("query", data=params)
            else:
                cm = self.session.get("query", params=params)
            async with cm as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    raise QueryError(f"InfluxDB query failed ({resp.status}): {body}")
        except TimeoutError:
            raise QueryError(f"InfluxDB at {self.config.url} did not answer within "
                             f"{self.config.timeout_s:g} s (timeout_s)") from None
        except aiohttp.ClientError as exc:
            raise QueryError(f"InfluxDB unreachable at {self.config.url}: "
                             f"{str(exc) or type(exc).__name__}") from None
        results: list[dict[str, Any]] = body.get("results", [])
        for r in results:
            if "error" in r:
                raise QueryError(f"InfluxQL error: {r['error']}")
        return results


def _each_caller(exc: BaseException) -> BaseException:
    """The failure of a group write as each of its callers gets it (its own copy)."""
    if isinstance(exc, StoreUnavailable):
        return StoreUnavailable(str(exc), exc.retry_after_s, exc.reason)
    if isinstance(exc, StoreRejected):
        return StoreRejected(str(exc))
    return exc


def _closing() -> StoreUnavailable:
    return StoreUnavailable("the collector is stopping; not stored", reason="closing")


def series_rows(result: dict[str, Any]) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """Flatten one statement's result into (tags, row-as-dict) pairs."""
    rows = []
    for series in result.get("series", []) or []:
        tags = series.get("tags", {}) or {}
        cols = series["columns"]
        for values in series["values"]:
            rows.append((tags, dict(zip(cols, values, strict=False))))
    return rows
