"""Recent alerts for ``gridwatt alerts`` and ``GET /v1/alerts``: open ones plus the last N resolved."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from gridwatt.collector.alerts.model import AlertEvent
from gridwatt.timeutil import format_time_ns


def _iso(t_ns: int | None) -> str | None:
    return None if t_ns is None else format_time_ns(t_ns)


def alert_record(event: AlertEvent, state: str) -> dict[str, Any]:
    """The JSON-ready view of one alert (times ISO 8601 UTC, ``null`` when not reached)."""
    return {
        "rule": event.rule,
        "severity": event.severity,
        "scope_kind": event.scope_kind,
        "scope": event.scope_name,
        "state": state,
        "started_at": _iso(event.started_at_ns),
        "fired_at": _iso(event.fired_at_ns),
        "resolved_at": _iso(event.resolved_at_ns),
        "mean_util_pct": event.mean_util_pct,
        "duration_s": event.idle_s,
        "wasted_energy_kwh": event.wasted_energy_kwh,
        "wasted_co2e_kg": event.wasted_co2e_kg,
        "waste_rate_kwh_per_h": event.waste_rate_kwh_per_h,
        "waste_rate_kg_per_h": event.waste_rate_kg_per_h,
        "gpus": list(event.gpus),
        "nodes": list(event.nodes),
        "labels": dict(event.labels),
    }


class AlertStore:
    """Keeps the latest event of every open alert and the last ``keep_resolved`` resolved ones.

    Feed it every event the engine emits (:meth:`apply`), and periodically the engine's
    ``active_alerts()`` snapshots to refresh the numbers of firing alerts.
    """

    def __init__(self, keep_resolved: int = 100) -> None:
        self.keep_resolved = keep_resolved
        self._open: dict[tuple[str, str, str], tuple[str, AlertEvent]] = {}
        self._resolved: deque[AlertEvent] = deque(maxlen=keep_resolved)

    def apply(self, events: Iterable[AlertEvent]) -> None:
        for ev in events:
            if ev.kind == "pending":
                self._open[ev.key] = ("pending", ev)
            elif ev.kind in ("firing", "still_firing"):
                self._open[ev.key] = ("firing", ev)
            elif ev.kind == "cancelled":
                self._open.pop(ev.key, None)
            elif ev.kind == "resolved":
                self._open.pop(ev.key, None)
                self._resolved.append(ev)

    def recent_alerts(self) -> list[dict[str, Any]]:
        """Firing, then pending (newest stretch first), then resolved (newest first)."""
        order = {"firing": 0, "pending": 1}
        open_items = sorted(
            self._open.values(), key=lambda se: (order[se[0]], -se[1].started_at_ns, se[1].key)
        )
        out = [alert_record(ev, state) for state, ev in open_items]
        out.extend(alert_record(ev, "resolved") for ev in reversed(self._resolved))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "open": [{"state": s, "event": e.to_dict()} for s, e in self._open.values()],
            "resolved": [e.to_dict() for e in self._resolved],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], keep_resolved: int = 100) -> AlertStore:
        store = cls(keep_resolved)
        for item in data.get("open", []):
            ev = event_from_dict(item["event"])
            store._open[ev.key] = (item["state"], ev)
        for item in data.get("resolved", []):
            store._resolved.append(event_from_dict(item))
        return store


def event_from_dict(d: dict[str, Any]) -> AlertEvent:
    """Inverse of :meth:`AlertEvent.to_dict`."""
    return AlertEvent(
        kind=d["kind"],
        rule=d["rule"],
        severity=d["severity"],
        scope_kind=d["scope_kind"],
        scope_name=d["scope"],
        at_ns=int(d["at_ns"]),
        started_at_ns=int(d["started_at_ns"]),
        fired_at_ns=None if d["fired_at_ns"] is None else int(d["fired_at_ns"]),
        resolved_at_ns=None if d["resolved_at_ns"] is None else int(d["resolved_at_ns"]),
        gpus=tuple(d["gpus"]),
        nodes=tuple(d["nodes"]),
        mean_util_pct=float(d["mean_util_pct"]),
        idle_s=float(d["duration_s"]),
        wasted_energy_kwh=float(d["wasted_energy_kwh"]),
        wasted_co2e_kg=float(d["wasted_co2e_kg"]),
        waste_rate_kwh_per_h=float(d["waste_rate_kwh_per_h"]),
        waste_rate_kg_per_h=float(d["waste_rate_kg_per_h"]),
        util_below_pct=float(d["util_below_pct"]),
        for_s=float(d["for_s"]),
        labels=tuple(sorted((str(k), str(v)) for k, v in d.get("labels", {}).items())),
    )
