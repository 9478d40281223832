"""What every sink implements and shares: delivery counters, config helpers, the retrying HTTP POST."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import aiohttp

from gridwatt.collector.alerts.model import AlertEvent

log = logging.getLogger("gridwatt.alerts")

SleepFn = Callable[[float], Awaitable[None]]

#: the event kinds a sink's ``events`` setting may list
EventKindName = Literal["pending", "firing", "resolved", "cancelled"]


def all_kinds() -> list[EventKindName]:
    return ["pending", "firing", "resolved", "cancelled"]


def firing_resolved() -> list[EventKindName]:
    return ["firing", "resolved"]


def check_http_url(value: str) -> str:
    """A sink's ``url`` setting: http(s) with a host (a pydantic field validator)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
    return value


class AlertSink(Protocol):
    """Delivers alert events somewhere. ``send`` never raises for delivery problems."""

    name: str
    stats: SinkStats

    async def send(self, event: AlertEvent) -> bool:
        """Deliver one event; True if delivered (or deliberately not wanted by this sink)."""
        ...

    async def close(self) -> None: ...


@dataclass
class SinkStats:
    delivered: int = 0
    failed: int = 0
    retries: int = 0
    skipped: int = 0


def backoff_delay_s(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before retry ``attempt`` (1-based): exponential, capped, with jitter in [d/2, d]."""
    d = min(max_s, initial_s * (2 ** (attempt - 1)))
    return d / 2 + rng.uniform(0, d / 2)


def _retryable_status(status: int) -> bool:
    return status >= 500 or status in (408, 429)


class HttpPoster:
    """POSTs JSON with bounded retries (exponential backoff + jitter) on errors, 5xx, 408 and 429.

    Owns an aiohttp session unless one is given. ``sleep`` and ``rng`` are injectable for tests.
    """

    def __init__(
        self,
        *,
        what: str,
        timeout_s: float,
        retries: int,
        backoff_initial_s: float,
        backoff_max_s: float,
        headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
        sleep: SleepFn = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.what = what
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.retries = retries
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.headers = dict(headers or {})
        self._session = session
        self._own_session = session is None
        self._sleep = sleep
        self._rng = rng or random.Random()

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._own_session = True
        return self._session

    async def post_json(
        self,
        url: str,
        payload: Any,
        stats: SinkStats,
        describe: str,
        headers: Mapping[str, str] | None = None,
    ) -> bool:
        """POST ``payload``; True on 2xx. After the last failed attempt, log and count a failure."""
        session = await self._get_session()
        all_headers = {**self.headers, **(headers or {})}
        attempts = 1 + self.retries
        problem = ""
        for attempt in range(1, attempts + 1):
            retry = False
            try:
                async with session.post(url, json=payload, headers=all_headers, timeout=self.timeout) as resp:
                    if 200 <= resp.status < 300:
                        await resp.read()
                        stats.delivered += 1
                        return True
                    body = (await resp.text())[:200]
                    problem = f"HTTP {resp.status}: {body.strip()}"
                    retry = _retryable_status(resp.status)
            except (TimeoutError, aiohttp.ClientError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                retry = True
            if not retry or attempt == attempts:
                break
            stats.retries += 1
            delay_s = backoff_delay_s(attempt, self.backoff_initial_s, self.backoff_max_s, self._rng)
            log.info(
                "%s: %s to %s failed (%s); retry %d/%d in %.2fs",
                self.what,
                describe,
                url,
                problem,
                attempt,
                self.retries,
                delay_s,
            )
            await self._sleep(delay_s)
        stats.failed += 1
        log.error(
            "%s: giving up on %s to %s after %d attempt(s): %s", self.what, describe, url, attempt, problem
        )
        return False

    async def close(self) -> None:
        if self._own_session and self._session is not None and not self._session.closed:
            await self._session.close()
