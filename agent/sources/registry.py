"""The GPU source registry: ``source.kind`` of the agent's config → a factory of the source.

A source registers its factory, and its config model if it has settings, in its own module
(``@SOURCES.register("sim", SimConfig)``); agent/sources/plugins.py imports every source module.
The source's table, ``[source.NAME]``, is validated by that model (agent/config.py
``SourceConfig``). See gridwatt/registry.py and README "Adding a part".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gridwatt.agent.sources.base import GpuSource, SourceContext
from gridwatt.registry import Registry

#: (the source's own settings: its config model, or None without one; the node, interval and mode)
#: → an open source
SourceFactory = Callable[[Any, SourceContext], GpuSource]

SOURCES: Registry[SourceFactory] = Registry(
    "GPU source", "source.kind", plugins="gridwatt.agent.sources.plugins")
