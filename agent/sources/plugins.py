"""Every GPU source, registered (one import per source; see gridwatt/registry.py)."""

from gridwatt.agent.sources.nvml import source as _nvml  # noqa: F401
from gridwatt.agent.sources.registry import SOURCES
from gridwatt.agent.sources.sim import source as _sim  # noqa: F401

__all__ = ["SOURCES"]
