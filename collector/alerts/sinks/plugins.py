"""Every alert sink, registered (one import per sink; see gridwatt/registry.py)."""

from gridwatt.collector.alerts.sinks import alertmanager as _alertmanager  # noqa: F401
from gridwatt.collector.alerts.sinks import log as _log  # noqa: F401
from gridwatt.collector.alerts.sinks import webhook as _webhook  # noqa: F401
from gridwatt.collector.alerts.sinks.registry import SINKS

__all__ = ["SINKS"]
