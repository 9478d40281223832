"""Try intensity providers in order until one answers."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import aiohttp
from pydantic import Field

from gridwatt.collector.intensity.base import IntensityProvider, IntensitySeries, IntensityUnavailable
from gridwatt.collector.intensity.coverage import IntensityGap, Segment, clip, from_series, to_series
from gridwatt.collector.intensity.registry import PROVIDERS, ProviderConfig, ProviderTable, build
from gridwatt.collector.metrics import PROVIDER_ERRORS

log = logging.getLogger(__name__)


class ChainConfig(ProviderTable):
    """Providers tried in order; the first that answers wins."""

    kind: Literal["chain"]
    providers: list[ProviderConfig] = Field(min_length=1)
    cooldown_s: float = Field(default=60.0, ge=0)
    mark_fallback_estimated: bool = True


def _source_of(provider: IntensityProvider, index: int) -> str:
    source = getattr(provider, "source", None)
    return source if isinstance(source, str) else f"provider #{index + 1} ({type(provider).__name__})"


class FallbackChain:
    """Asks each provider in order; the first that answers gives the series.

    A provider that raises IntensityUnavailable, times out or fails over HTTP is
    skipped. One that covers only part of the range (IntensityGap) keeps that part and
    the next provider is asked for the rest only. Each step keeps the ``source`` of the
    provider that gave it (``IntensitySeries.source_at``). Values from
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
        """Intensity over the range from the providers in order; IntensityUnavailable if a stretch is left.

        A provider that covers only part of the range (IntensityGap: e.g. a value held to its
        ``max_hold`` and no further) keeps that part; the next provider is asked for the missing
        stretches only, and so on down the chain.
        """
        return await self._series(start_ns, end_ns, skip_cooling=True)

    async def revisit_series(self, start_ns: int, end_ns: int) -> IntensitySeries:
        """Like ``series``, but forgets cached answers for the range and asks even cooling providers:
        used to look for measured values that replace estimates (collector/revisit.py)."""
        for p in self.providers:
            forget = getattr(p, "forget", None)
            if forget is not None:
                forget(start_ns, end_ns)
        return await self._series(start_ns, end_ns, skip_cooling=False)

    async def _series(self, start_ns: int, end_ns: int, *, skip_cooling: bool) -> IntensitySeries:
        reasons: list[str] = []
        now = time.monotonic()
        end_ns = max(end_ns, start_ns + 1)
        todo = [(start_ns, end_ns)]
        got: list[Segment] = []
        for i, provider in enumerate(self.providers):
            if not todo:
                break
            last_failed = self._failing.get(i)
            cooling = last_failed is not None and now - last_failed < self._cooldown_s
            if skip_cooling and cooling and last_failed is not None and i < len(self.providers) - 1:
                reasons.append(f"{_source_of(provider, i)}: skipped (failed {now - last_failed:.0f} s ago)")
                continue
            left: list[tuple[int, int]] = []
            answered = False
            for a, b in todo:
                try:
                    result = await provider.series(a, b)
                except IntensityGap as gap:  # an answer: the data has a hole here; not a failure
                    answered = True
                    reasons.append(str(gap))
                    got += self._mark_fallback(clip(gap.segments, a, b), i)
                    left += gap.missing
                    continue
                except (IntensityUnavailable, TimeoutError, aiohttp.ClientError) as exc:
                    reasons.append(str(exc) or type(exc).__name__)
                    left.append((a, b))
                    continue
                answered = True
                if (a, b) == (start_ns, end_ns) and (i == 0 or not self._mark):
                    self._answered(i)
                    return result  # one provider answered the whole range as it is
                got += self._mark_fallback(from_series(result, a, b), i)
            if left and not answered:
                PROVIDER_ERRORS.labels(provider=_source_of(provider, i)).inc()
                if i not in self._failing:
                    log.warning("intensity provider %s unavailable: %s", _source_of(provider, i), reasons[-1])
                self._failing[i] = time.monotonic()
            else:
                self._answered(i)
            todo = left
        if todo:
            raise IntensityUnavailable("no intensity provider answered: " + "; ".join(reasons))
        return to_series(got, start_ns, end_ns)

    def _answered(self, index: int) -> None:
        if self._failing.pop(index, None) is not None:
            log.info("intensity provider %s answers again", _source_of(self.providers[index], index))

    def _mark_fallback(self, segments: list[Segment], index: int) -> list[Segment]:
        if index == 0 or not self._mark:
            return segments
        return [replace(s, estimated=True) for s in segments]

    async def close(self) -> None:
        """Close every provider that has a ``close``."""
        for p in self.providers:
            close = getattr(p, "close", None)
            if close is not None:
                await close()


@PROVIDERS.register("chain", ChainConfig)
def chain_provider(cfg: ChainConfig) -> FallbackChain:
    return FallbackChain(
        [build(p) for p in cfg.providers],
        cooldown_s=cfg.cooldown_s,
        mark_fallback_estimated=cfg.mark_fallback_estimated,
    )
