"""Log sink: one structured (JSON) line per event on the ``gridwatt.alerts`` logger."""

from __future__ import annotations

import json
import logging

import aiohttp

from gridwatt.collector.alerts.model import AlertEvent
from gridwatt.collector.alerts.rules import LogSinkConfig, SinksConfig
from gridwatt.collector.alerts.sinks.base import AlertSink, SinkStats
from gridwatt.collector.alerts.sinks.registry import SINKS

_LEVELS = {"firing": logging.WARNING}


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


@SINKS.register("log")
def log_sinks(config: SinksConfig, session: aiohttp.ClientSession | None) -> list[AlertSink]:
    """``[alerts.sinks.log]``: one JSON log line per event, unless ``enabled = false``."""
    return [LogSink(config.log)] if config.log.enabled else []
