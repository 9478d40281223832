"""HTTP behaviour shared by the API intensity providers.

One JSON GET with a per-attempt timeout, ``429`` handled by honouring ``Retry-After``
(seconds or an HTTP-date), ``5xx`` and connection errors retried with exponential
backoff and full jitter, and ``401``/``403`` turned into :class:`AuthRejected`.
Every failure ends as :class:`IntensityUnavailable` (or its subclass) with a message
that names the provider and the path, and never a secret: messages are scrubbed of
every string in ``secrets`` before they leave this module.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from gridwatt.collector.intensity.base import IntensityUnavailable

log = logging.getLogger(__name__)

SleepFn = Callable[[float], Awaitable[None]]


class AuthRejected(IntensityUnavailable):
    """The API refused the credentials (HTTP 401 or 403)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class HttpSettings:
    """Timeouts and retry bounds of one API provider.

    ``timeout_s`` bounds each attempt; ``max_attempts`` bounds attempts per request
    (429 and 5xx both count); backoff before retry n (0-based) is uniform in
    ``[0, min(backoff_max_s, backoff_base_s * 2**n)]``; a ``Retry-After`` longer than
    ``retry_after_max_s`` is not waited for (the request fails instead).
    """

    timeout_s: float = 10.0
    max_attempts: int = 4
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 120.0

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.max_attempts < 1:
            raise ValueError("timeout_s must be > 0 and max_attempts >= 1")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0 or self.retry_after_max_s < 0:
            raise ValueError("backoff and retry-after bounds must be >= 0")


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every non-empty secret replaced by ``***``."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def basic_auth_header(username: str, password: str) -> str:
    """The value of an ``Authorization`` header for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def parse_retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max((when - now).total_seconds(), 0.0)


class JsonClient:
    """Makes JSON GET requests for one provider, with the bounded retry policy above.

    The aiohttp session is created on first use (inside the running loop) and closed
    by :meth:`close`.
    """

    def __init__(
        self,
        name: str,
        settings: HttpSettings,
        *,
        secrets: Iterable[str] = (),
        sleep: SleepFn = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self._secrets = tuple(s for s in secrets if s)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None

    def add_secret(self, secret: str) -> None:
        """Scrub this string too (e.g. a bearer token obtained at run time)."""
        if secret and secret not in self._secrets:
            self._secrets = (*self._secrets, secret)

    def _msg(self, text: str) -> str:
        return scrub(f"{self.name}: {text}", self._secrets)

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def _backoff_s(self, retry: int) -> float:
        cap = min(self.settings.backoff_max_s, self.settings.backoff_base_s * (2**retry))
        return self._rng.uniform(0.0, cap)

    async def get_json(
        self,
        url: str,
        *,
        path_for_errors: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """GET ``url`` and decode JSON; raise IntensityUnavailable (or AuthRejected) on failure.

        ``path_for_errors`` is what error messages call the request (no query, no secrets).
        """
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        where = path_for_errors
        last = "no attempt made"
        for attempt in range(self.settings.max_attempts):
            final = attempt == self.settings.max_attempts - 1
            try:
                async with self._session_now().get(
                    url, params=params, headers=headers, timeout=timeout
                ) as resp:
                    status = resp.status
                    if status in (401, 403):
                        raise AuthRejected(
                            self._msg(
                                f"{where}: HTTP {status}: credentials rejected "
                                "(check the API key or password configured for this provider)"
                            ),
                            status,
                        )
                    if status == 429:
                        wait_s = parse_retry_after_s(resp.headers.get("Retry-After"))
                        if wait_s is None:
                            wait_s = self._backoff_s(attempt)
                        last = f"HTTP 429 (rate limited), Retry-After {resp.headers.get('Retry-After')!r}"
                        if final:
                            break
                        if wait_s > self.settings.retry_after_max_s:
                            raise IntensityUnavailable(
                                self._msg(
                                    f"{where}: rate limited; Retry-After {wait_s:.0f} s exceeds the "
                                    f"{self.settings.retry_after_max_s:.0f} s we wait"
                                )
                            )
                        log.debug("%s: %s: rate limited, waiting %.1f s", self.name, where, wait_s)
                        await self._sleep(wait_s)
                        continue
                    if status >= 500:
                        last = f"HTTP {status}"
                        if final:
                            break
                        await self._sleep(self._backoff_s(attempt))
                        continue
                    if status >= 400:
                        body = (await resp.text())[:200]
                        raise IntensityUnavailable(self._msg(f"{where}: HTTP {status}: {body}"))
                    try:
                        return await resp.json(content_type=None)
                    except ValueError:
                        raise IntensityUnavailable(self._msg(f"{where}: response is not JSON")) from None
            except TimeoutError:
                raise IntensityUnavailable(
                    self._msg(f"{where}: no answer within {self.settings.timeout_s:g} s")
                ) from None
            except aiohttp.ClientError as exc:
                last = f"connection error ({type(exc).__name__})"
                if final:
                    break
                await self._sleep(self._backoff_s(attempt))
        n = self.settings.max_attempts
        raise IntensityUnavailable(
            self._msg(f"{where}: gave up after {n} attempt{'' if n == 1 else 's'}; last: {last}")
        )
