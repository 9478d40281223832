"""Try intensity providers in order until one answers."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import aiohttp

from gridwatt.collector.intensity.base import IntensityProvider, IntensitySeries, IntensityUnavailable
from gridwatt.collector.metrics import PROVIDER_ERRORS
from gridwatt.collector.stepseries import StepSeries

log = logging.getLogger(__name__)


def _source_of(provider: IntensityProvider, index: int) -> str:
    source = getattr(provider, "source", None)
    return source if isinstance(source, str) else f"provider #{index + 1} ({type(provider).__name__})"


def _all_estimated(s: IntensitySeries) -> IntensitySeries:
    steps = StepSeries(s.series.times_ns, s.series.values, (True,) * len(s.series.times_ns))
    return IntensitySeries(steps, s.source, s.emission_factor)


class FallbackChain:
    """Asks each provider in order; the first that answers gives the series.

    A provider that raises IntensityUnavailable, times out or fails over HTTP is
    skipped. The answer keeps the ``source`` of the provider that gave it. Values from
    any provider after the first stand in for the ones we wanted, so they are all
    marked estimated (``mark_fallback_estimated``). A failing provider is logged once
    when it starts failing and once when it answers again, not on every call, and is
    not asked again for ``cooldown_s`` after a failure (so an outage does not cost a
    timeout per batch).
    """

    def __init__(
        self,
        providers: Sequence[IntensityProvider],
        *,
        cooldown_s: float = 60.0,
        mark_fallback_estimated: bool = True,
    ) -> None:
        if not providers:
            raise ValueError("a FallbackChain needs at least one provider")
        self.providers = list(providers)
        self._cooldown_s = cooldown_s
        self._mark = mark_fallback_estimated
        self._failing: dict[int, float] = {}  # provider index -> monotonic time of its last failure
        self.source = "chain(" + ", ".join(_source_of(p, i) for i, p in enumerate(self.providers)) + ")"

    async def series(self, start_ns: int, end_ns: int) -> IntensitySeries:
        """The first answer among the providers; IntensityUnavailable if none answers."""
        reasons: list[str] = []
        now = time.monotonic()
        for i, provider in enumerate(self.providers):
            last_failed = self._failing.get(i)
            cooling = last_failed is not None and now - last_failed < self._cooldown_s
            if cooling and last_failed is not None and i < len(self.providers) - 1:
                reasons.append(f"{_source_of(provider, i)}: skipped (failed {now - last_failed:.0f} s ago)")
                continue
            try:
                result = await provider.series(start_ns, end_ns)
            except (IntensityUnavailable, TimeoutError, aiohttp.ClientError) as exc:
                reason = str(exc) or type(exc).__name__
                reasons.append(reason)
                PROVIDER_ERRORS.labels(provider=_source_of(provider, i)).inc()
                if i not in self._failing:
                    log.warning("intensity provider %s unavailable: %s", _source_of(provider, i), reason)
                self._failing[i] = time.monotonic()
                continue
            if self._failing.pop(i, None) is not None:
                log.info("intensity provider %s answers again", _source_of(provider, i))
            return _all_estimated(result) if i > 0 and self._mark else result
        raise IntensityUnavailable("no intensity provider answered: " + "; ".join(reasons))

    async def close(self) -> None:
        """Close every provider that has a ``close``."""
        for p in self.providers:
            close = getattr(p, "close", None)
            if close is not None:
                await close()
