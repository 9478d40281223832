"""The GPU source registry: ``source.kind`` of the agent's config → a factory of the source.

A source registers itself in its own module (``@SOURCES.register("kind")``); agent/sources/plugins.py
imports every source module. See gridwatt/registry.py and README "Adding a part".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gridwatt.agent.sources.base import GpuSource
from gridwatt.registry import Registry

if TYPE_CHECKING:
    from gridwatt.agent.config import AgentConfig

#: (the agent's config, replay mode) → an open source
SourceFactory = Callable[["AgentConfig", bool], GpuSource]

SOURCES: Registry[SourceFactory] = Registry("GPU source", "source.kind")
