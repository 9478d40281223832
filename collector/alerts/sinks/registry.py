"""The alert sink registry: a section of ``[alerts.sinks]`` → a factory of its sinks.

A sink registers itself in its own module (``@SINKS.register("section")``); sinks/plugins.py imports
every sink module. See gridwatt/registry.py.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from gridwatt.collector.alerts.rules import SinksConfig
from gridwatt.collector.alerts.sinks.base import AlertSink
from gridwatt.registry import Registry

#: (the [alerts.sinks] table, a shared HTTP session or None) → the sinks that section asks for
SinkFactory = Callable[[SinksConfig, aiohttp.ClientSession | None], list[AlertSink]]

SINKS: Registry[SinkFactory] = Registry("alert sink", "alerts.sinks")
