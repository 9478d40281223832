"""The alert sink registry, and ``[alerts.sinks]``: one table (or array of tables) per sink.

A sink registers its factory and its config model in its own module
(``@SINKS.register("webhooks", WebhookSinkConfig)``); sinks/plugins.py imports every sink module.
``[alerts.sinks.NAME]`` (one sink) or ``[[alerts.sinks.NAME]]`` (several) holds sink NAME's
settings, validated by its model (:class:`SinksConfig`). See gridwatt/registry.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import aiohttp

from gridwatt.collector.alerts.sinks.base import AlertSink
from gridwatt.registry import PartTables, Registry

#: (the sink's tables in [alerts.sinks], none to many; a shared HTTP session or None) → its sinks
SinkFactory = Callable[[list[Any], aiohttp.ClientSession | None], list[AlertSink]]

SINKS: Registry[SinkFactory] = Registry(
    "alert sink", "alerts.sinks", plugins="gridwatt.collector.alerts.sinks.plugins")


class SinksConfig(PartTables):
    """``[alerts.sinks]``: each key names a registered sink and holds its table
    (``[alerts.sinks.log]``, ``[alerts.sinks.alertmanager]``) or array of tables
    (``[[alerts.sinks.webhooks]]``), each validated by the sink's own config model."""

    part_registry: ClassVar[Registry[Any]] = SINKS
    part_arrays: ClassVar[bool] = True
