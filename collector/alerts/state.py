"""Persist the alert engine (and optionally the store) to one JSON file, written atomically.

Write after the events of a batch were handed to the sinks: a crash before the write then
re-emits those events on restart (at-least-once delivery; webhook receivers can dedup on
``event_id``), and a crash after it never repeats a firing nor loses a resolve.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gridwatt.atomic_file import replace_file
from gridwatt.collector.alerts.engine import AlertEngine
from gridwatt.collector.alerts.rules import AlertRule
from gridwatt.collector.alerts.store import AlertStore


class AlertStateError(Exception):
    """The state file exists but cannot be used; the message names the file and reason."""


def save_state(path: Path | str, engine: AlertEngine, store: AlertStore | None = None) -> None:
    """Atomically write the engine's state (and the store's recent alerts, if given)."""
    data: dict[str, Any] = {"engine": engine.to_dict()}
    if store is not None:
        data["store"] = store.to_dict()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, json.dumps(data, sort_keys=True, separators=(",", ":")))


def load_state(
    path: Path | str, rules: Sequence[AlertRule], keep_resolved: int = 100
) -> tuple[AlertEngine, AlertStore]:
    """Engine and store from ``path``; a fresh pair if the file does not exist."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return AlertEngine(rules), AlertStore(keep_resolved)
    except OSError as exc:
        raise AlertStateError(f"{path}: cannot read alert state: {exc.strerror}") from None
    try:
        data = json.loads(text)
        engine = AlertEngine.from_dict(rules, data["engine"])
        store = AlertStore.from_dict(data.get("store", {}), keep_resolved)
    except (ValueError, KeyError, TypeError) as exc:
        raise AlertStateError(f"{path}: not a valid alert state file: {exc}") from None
    return engine, store
