"""Log sink: one structured (JSON) line per event on the ``gridwatt.alerts`` logger."""

from __future__ import annotations

import json
import logging

import aiohttp
from pydantic import Field

from gridwatt.collector.alerts.model import AlertEvent
from gridwatt.collector.alerts.sinks.base import AlertSink, EventKindName, SinkStats, all_kinds
from gridwatt.collector.alerts.sinks.registry import SINKS
from gridwatt.configfile import StrictModel

_LEVELS = {"firing": logging.WARNING}


class LogSinkConfig(StrictModel):
    """``[alerts.sinks.log]``: one structured (JSON) log line per event."""

    enabled: bool = True
    logger: str = "gridwatt.alerts"
    events: list[EventKindName] = Field(default_factory=all_kinds)


class LogSink:
    """``alert {...}`` at WARNING for firing, INFO for the other kinds."""

    name = "log"

    def __init__(self, config: LogSinkConfig | None = None) -> None:
        self.config = config or LogSinkConfig()
        self.logger = logging.getLogger(self.config.logger)
        self.stats = SinkStats()

    async def send(self, event: AlertEvent) -> bool:
        if event.kind not in self.config.events:
            self.stats.skipped += 1
            return True
        line = json.dumps(event.to_dict(), sort_keys=True, separators=(",", ":"))
        self.logger.log(_LEVELS.get(event.kind, logging.INFO), "alert %s", line)
        self.stats.delivered += 1
        return True

    async def close(self) -> None:
        return None


@SINKS.register("log", LogSinkConfig)
def log_sinks(tables: list[LogSinkConfig], session: aiohttp.ClientSession | None) -> list[AlertSink]:
    """``[alerts.sinks.log]``: one JSON log line per event, on unless ``enabled = false``."""
    return [LogSink(t) for t in tables or [LogSinkConfig()] if t.enabled]
