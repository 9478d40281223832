"""Sinks for alert events: log, webhook, Prometheus Alertmanager, and a dispatcher over them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

import aiohttp

from gridwatt.collector.alerts.model import AlertEvent
from gridwatt.collector.alerts.sinks.alertmanager import AlertmanagerSink
from gridwatt.collector.alerts.sinks.base import AlertSink, SinkStats
from gridwatt.collector.alerts.sinks.log import LogSink
from gridwatt.collector.alerts.sinks.plugins import SINKS
from gridwatt.collector.alerts.sinks.registry import SinksConfig
from gridwatt.collector.alerts.sinks.webhook import WebhookSink

__all__ = [
    "AlertDispatcher",
    "AlertSink",
    "AlertmanagerSink",
    "LogSink",
    "SinkStats",
    "WebhookSink",
    "build_sinks",
]

log = logging.getLogger("gridwatt.alerts")


def build_sinks(config: SinksConfig, session: aiohttp.ClientSession | None = None) -> list[AlertSink]:
    """The sinks a config asks for: each registered sink's factory, by name, with its tables."""
    return [sink for name, factory in SINKS.items() for sink in factory(config.tables(name), session)]


class AlertDispatcher:
    """Hands each event to every sink, concurrently across sinks and in order within one sink.

    A failing sink (after its own retries) is counted in its ``stats`` and never blocks the others.
    """

    def __init__(self, sinks: Sequence[AlertSink]) -> None:
        self.sinks = list(sinks)

    async def _to_sink(self, sink: AlertSink, events: Sequence[AlertEvent]) -> None:
        for ev in events:
            try:
                await sink.send(ev)
            except Exception:
                sink.stats.failed += 1
                log.exception("alert sink %s raised on %s %s/%s", sink.name, ev.kind, ev.rule, ev.scope_name)

    async def dispatch(self, events: Iterable[AlertEvent]) -> None:
        batch = list(events)
        if batch:
            await asyncio.gather(*(self._to_sink(s, batch) for s in self.sinks))

    def alertmanager_sinks(self) -> list[AlertmanagerSink]:
        return [s for s in self.sinks if isinstance(s, AlertmanagerSink)]

    async def close(self) -> None:
        for sink in self.sinks:
            await sink.close()
