"""Every intensity provider, registered (one import per provider; see gridwatt/registry.py)."""

from gridwatt.collector.intensity import chain as _chain  # noqa: F401
from gridwatt.collector.intensity import constant as _constant  # noqa: F401
from gridwatt.collector.intensity import csv_file as _csv_file  # noqa: F401
from gridwatt.collector.intensity import electricitymaps as _electricitymaps  # noqa: F401
from gridwatt.collector.intensity import uk_carbon as _uk_carbon  # noqa: F401
from gridwatt.collector.intensity import watttime as _watttime  # noqa: F401
from gridwatt.collector.intensity.registry import PROVIDERS

__all__ = ["PROVIDERS"]
