"""The part every API intensity provider shares: a range cache in front of ``_fetch``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from types import TracebackType

import aiohttp
from pydantic import Field

from gridwatt.collector.intensity.base import EmissionFactor, IntensitySeries, IntensityUnavailable
from gridwatt.collector.intensity.cache import Point, RangeCache
from gridwatt.collector.intensity.coverage import IntensityGap, Segment, clip, uncovered
from gridwatt.collector.intensity.http import HttpSettings, JsonClient, SleepFn
from gridwatt.collector.intensity.registry import ProviderTable
from gridwatt.timeutil import NS_PER_S

ClockNs = Callable[[], int]


class HttpProviderConfig(ProviderTable):
    """HTTP behaviour common to the API providers."""

    timeout_s: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=4, ge=1, le=10)
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    retry_after_max_s: float = Field(default=120.0, ge=0)
    min_refetch_s: float = Field(default=60.0, ge=0)
    #: longest a value is held past its own period, marked estimated (unset: the provider's
    #: default: 3 h Electricity Maps, 1 h WattTime, 2 h UK); beyond it the chain moves on
    max_hold_s: float | None = Field(default=None, ge=0, le=7 * 24 * 3600)

    def http_settings(self) -> HttpSettings:
        return HttpSettings(
            timeout_s=self.timeout_s,
            max_attempts=self.max_attempts,
            backoff_base_s=self.backoff_base_s,
            backoff_max_s=self.backoff_max_s,
            retry_after_max_s=self.retry_after_max_s,
        )


def floor_ns(t_ns: int, period_ns: int) -> int:
    """``t_ns`` rounded down to a multiple of ``period_ns`` since the epoch."""
    return t_ns - t_ns % period_ns


def chunks(start_ns: int, end_ns: int, max_ns: int) -> Iterator[tuple[int, int]]:
    """``[start_ns, end_ns)`` cut into consecutive pieces no longer than ``max_ns``."""
    t = start_ns
    while t < end_ns:
        yield t, min(t + max_ns, end_ns)
        t += max_ns


class CachedApiProvider:
    """Serves ``series()`` from a :class:`RangeCache`, fetching only the missing parts.

    Subclasses implement ``_fetch(start_ns, end_ns) -> (points, covered_until_ns)``:
    the points they got and how far the range is now known for good. A fetch that
    falls short (data not yet published near "now") is not repeated for
    ``min_refetch_s``; meanwhile the last value holds, marked estimated, for at most
    ``max_hold_ns`` past the end of its period. A stretch beyond that is not covered:
    ``series`` raises IntensityGap (the chain asks the next provider for that stretch only).
    """

    #: how long one value may be held past the end of its own period (marked estimated)
    max_hold_ns: int = 3 * 3600 * NS_PER_S

    def __init__(
        self,
        *,
        name: str,
        source: str,
        emission_factor: EmissionFactor,
        http: HttpSettings,
        secrets: tuple[str, ...] = (),
        sleep: SleepFn = asyncio.sleep,
        clock_ns: ClockNs = time.time_ns,
        min_refetch_s: float = 60.0,
        max_hold_s: float | None = None,
    ) -> None:
        if max_hold_s is not None:
            self.max_hold_ns = int(max_hold_s * NS_PER_S)
        self.name = name
        self.source = source
        self.emission_factor: EmissionFactor = emission_factor
        self._http = JsonClient(name, http, secrets=secrets, sleep=sleep)
        self._clock_ns = clock_ns
        self._cache = RangeCache()
        self._lock = asyncio.Lock()
        self._min_refetch_s = min_refetch_s
        self._frontier_ns: int | None = None
        self._frontier_checked_mono = 0.0
        self._failed: BaseException | None = None  # the last fetch's failure, while it is recent
        self._failed_mono = 0.0
        self._holes: dict[tuple[int, int], float] = {}  # holes in answers -> monotonic time asked

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r})"

    async def _fetch(self, start_ns: int, end_ns: int) -> tuple[list[Point], int]:
        raise NotImplementedError

    async def series(self, start_ns: int, end_ns: int) -> IntensitySeries:
        """Intensity over ``[start_ns, end_ns)``; raise IntensityUnavailable if it cannot be had."""
        async with self._lock:
            failed: BaseException | None = None
            for gap_start, gap_end in self._cache.missing(start_ns, end_ns):
                if (
                    self._frontier_ns is not None
                    and gap_start >= self._frontier_ns
                    and time.monotonic() - self._frontier_checked_mono < self._min_refetch_s
                ):
                    continue  # asked a moment ago; the API had nothing newer
                if self._asked_recently(gap_start, gap_end):
                    continue  # a hole in the data, asked a moment ago
                if self._failed is not None and time.monotonic() - self._failed_mono < self._min_refetch_s:
                    failed = self._failed  # failed a moment ago: answer from the cache (holds) until
                    break                  # min_refetch_s has passed, instead of a timeout per batch
                try:
                    points, covered_until = await self._fetch(gap_start, gap_end)
                except (IntensityUnavailable, TimeoutError, aiohttp.ClientError) as exc:
                    failed = self._failed = exc
                    self._failed_mono = time.monotonic()
                    break
                self._failed = None
                covered_until = min(covered_until, gap_end)
                # only what the points cover is known for good: a hole (e.g. a null hour) is asked
                # again later (at most every min_refetch_s), as its value may still come
                known = [Segment(p.time_ns, p.end_ns if p.end_ns is not None else covered_until, 0.0, False)
                         for p in points]
                self._cache.add(points)
                for seg in clip(known, gap_start, covered_until):
                    self._cache.add([], (seg.start_ns, seg.end_ns))
                now_mono = time.monotonic()
                for hole in uncovered(known, gap_start, covered_until):
                    self._holes[hole] = now_mono
                if covered_until < gap_end:
                    self._frontier_ns = covered_until
                    self._frontier_checked_mono = time.monotonic()
            try:
                steps = self._cache.series(start_ns, end_ns, self.name, self.max_hold_ns)
            except IntensityGap as gap:
                if failed is not None and not gap.segments:
                    raise failed from None  # nothing cached to hold: the API's failure is the answer
                named = [replace(g, source=self.source, emission_factor=self.emission_factor)
                         for g in gap.segments]
                why = str(gap)
                if failed is not None:
                    why += f" (API: {str(failed) or type(failed).__name__})"
                raise IntensityGap(why, named, gap.missing) from None
        return IntensitySeries(steps, self.source, self.emission_factor)

    def _asked_recently(self, start_ns: int, end_ns: int) -> bool:
        """Whether ``[start_ns, end_ns)`` lies in a hole of an answer less than min_refetch_s old."""
        now = time.monotonic()
        if len(self._holes) > 1000:
            self._holes = {h: t for h, t in self._holes.items() if now - t < self._min_refetch_s}
        return any(a <= start_ns and end_ns <= b and now - t < self._min_refetch_s
                   for (a, b), t in self._holes.items())

    def forget(self, start_ns: int, end_ns: int) -> None:
        """Ask the API again for ``[start_ns, end_ns)`` on the next ``series`` (a late value may be there)."""
        self._cache.forget(start_ns, end_ns)
        self._frontier_ns = None
        self._failed = None
        self._holes.clear()

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._http.close()

    async def __aenter__(self) -> CachedApiProvider:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
