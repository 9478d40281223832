"""Idle-GPU alerts: rules, a pure state machine over scope windows, persistence, sinks, recent store.

Wiring (see README.md)::

    engine, store = load_state(cfg.state_file, cfg.rules, cfg.keep_resolved)
    events = engine.observe(window)          # for each closed rack/job/group/cluster window
    store.apply(events)
    await dispatcher.dispatch(events)
    save_state(cfg.state_file, engine, store)
"""

from gridwatt.collector.alerts.engine import AlertEngine, classify
from gridwatt.collector.alerts.model import AlertEvent, ScopeWindow, combine_windows
from gridwatt.collector.alerts.rules import AlertRule, AlertsConfig
from gridwatt.collector.alerts.sinks.alertmanager import AlertmanagerSinkConfig
from gridwatt.collector.alerts.sinks.log import LogSinkConfig
from gridwatt.collector.alerts.sinks.registry import SinksConfig
from gridwatt.collector.alerts.sinks.webhook import WebhookSinkConfig
from gridwatt.collector.alerts.state import AlertStateError, load_state, save_state
from gridwatt.collector.alerts.store import AlertStore

__all__ = [
    "AlertEngine",
    "AlertEvent",
    "AlertRule",
    "AlertStateError",
    "AlertStore",
    "AlertmanagerSinkConfig",
    "AlertsConfig",
    "LogSinkConfig",
    "ScopeWindow",
    "SinksConfig",
    "WebhookSinkConfig",
    "classify",
    "combine_windows",
    "load_state",
    "save_state",
]
