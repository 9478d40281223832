"""The idle-GPU alert state machine: pure, no I/O, driven by windows in sample time.

Per (rule, scope) an alert goes ``inactive → pending → firing → resolved (→ inactive)``;
a pending stretch that ends before ``for_s`` is ``cancelled``. Every change is emitted once.

Each window is classified against its rule:

* **low**: ``gpu_count >= min_gpus`` and ``mean_util_pct < util_below_pct`` (idle);
* **band**: ``util_below_pct <= mean_util_pct <= resolve_above_pct`` (neither idle nor recovered);
* **clear**: ``mean_util_pct > resolve_above_pct``, or fewer than ``min_gpus`` GPUs reported.

A **gap** (sample time between a scope's last window and its next one, or up to the watermark
given to :meth:`AlertEngine.advance_to`) has no data, so it is *not idle*: it counts as *clear*.
No reporting GPUs means no measurable waste (nodes off, job ended); an idle stretch must be
continuous data.

* inactive + low → **pending** (at the window's end; the stretch starts at its start).
* pending + low → stays pending; fires once the stretch spans ``for_s``: **firing** at the end of
  the window that completed it (``fired_at_ns``). pending + band/clear/gap → **cancelled**.
* firing + low → stays firing, the idle stretch grows; band → stays firing, recovery restarts;
  clear/gap → recovery runs from the start of the first clear window (or gap) and the alert is
  **resolved** once it ran ``resolve_after_s`` uninterrupted: at the end of the window that
  completes it (or exactly ``resolve_after_s`` into a gap).

Waste counts only idle (low) windows of the stretch, from its start (not from firing).

Windows for one scope must arrive in time order. A window that ends at or before the last
window seen for that (rule, scope), or that overlaps it, is ignored (a resend or a late
duplicate must not count twice); :attr:`AlertEngine.ignored_windows` counts them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from gridwatt.collector.alerts.model import AlertEvent, EventKind, ScopeWindow
from gridwatt.collector.alerts.rules import AlertRule

NS_PER_H = 3_600_000_000_000
STATE_VERSION = 1


class _Class(Enum):
    LOW = "low"
    BAND = "band"
    CLEAR = "clear"


def classify(rule: AlertRule, window: ScopeWindow) -> str:
    """``"low"``, ``"band"`` or ``"clear"`` for this window under this rule (see module doc)."""
    return _classify(rule, window).value


def _classify(rule: AlertRule, window: ScopeWindow) -> _Class:
    if window.gpu_count < rule.min_gpus:
        return _Class.CLEAR
    if window.mean_util_pct < rule.util_below_pct:
        return _Class.LOW
    if window.mean_util_pct > rule.resolve_above:
        return _Class.CLEAR
    return _Class.BAND


INACTIVE, PENDING, FIRING = "inactive", "pending", "firing"


@dataclass
class _Track:
    """State of one (rule, scope)."""

    state: str = INACTIVE
    last_end_ns: int | None = None
    started_at_ns: int = 0
    fired_at_ns: int | None = None
    last_idle_end_ns: int = 0
    idle_ns: int = 0
    util_gpu_s: float = 0.0  # sum of util_pct × gpu_count × seconds over idle windows
    gpu_s: float = 0.0  # sum of gpu_count × seconds over idle windows
    wasted_kwh: float = 0.0
    wasted_kg: float = 0.0
    recent: list[tuple[int, int, float, float]] = field(default_factory=list)  # idle windows in last for_s
    gpus: set[str] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)
    recovering_since_ns: int | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def start_stretch(self, start_ns: int) -> None:
        self.state = PENDING
        self.started_at_ns = start_ns
        self.fired_at_ns = None
        self.last_idle_end_ns = start_ns
        self.idle_ns = 0
        self.util_gpu_s = self.gpu_s = self.wasted_kwh = self.wasted_kg = 0.0
        self.recent = []
        self.gpus, self.nodes = set(), set()
        self.recovering_since_ns = None

    def add_idle(self, w: ScopeWindow, for_ns: int) -> None:
        dur_ns = w.end_ns - w.start_ns
        gpu_s = w.gpu_count * dur_ns / 1e9
        self.idle_ns += dur_ns
        self.util_gpu_s += w.mean_util_pct * gpu_s
        self.gpu_s += gpu_s
        self.wasted_kwh += w.facility_energy_kwh
        self.wasted_kg += w.co2e_kg
        self.last_idle_end_ns = w.end_ns
        self.recent.append((w.start_ns, w.end_ns, w.facility_energy_kwh, w.co2e_kg))
        horizon = w.end_ns - max(for_ns, dur_ns)
        self.recent = [r for r in self.recent if r[1] > horizon]
        self.gpus.update(w.gpus)
        self.nodes.update(w.nodes)
        self.labels.update(w.labels)

    def rates(self, for_ns: int) -> tuple[float, float]:
        """kWh/h and kg/h over the idle windows of the last for_s (pro-rated at its edge)."""
        span_ns = max(for_ns, self.recent[-1][1] - self.recent[-1][0]) if self.recent else for_ns
        horizon = self.last_idle_end_ns - span_ns
        kwh = kg = 0.0
        covered_ns = 0
        for start, end, r_kwh, r_kg in self.recent:
            overlap = end - max(start, horizon)
            if overlap <= 0:
                continue
            frac = overlap / (end - start)
            kwh += r_kwh * frac
            kg += r_kg * frac
            covered_ns += overlap
        if covered_ns == 0:
            return 0.0, 0.0
        hours = covered_ns / NS_PER_H
        return kwh / hours, kg / hours

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "last_end_ns": self.last_end_ns,
            "started_at_ns": self.started_at_ns,
            "fired_at_ns": self.fired_at_ns,
            "last_idle_end_ns": self.last_idle_end_ns,
            "idle_ns": self.idle_ns,
            "util_gpu_s": self.util_gpu_s,
            "gpu_s": self.gpu_s,
            "wasted_kwh": self.wasted_kwh,
            "wasted_kg": self.wasted_kg,
            "recent": [list(r) for r in self.recent],
            "gpus": sorted(self.gpus),
            "nodes": sorted(self.nodes),
            "recovering_since_ns": self.recovering_since_ns,
            "labels": self.labels,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _Track:
        return cls(
            state=str(d["state"]),
            last_end_ns=None if d["last_end_ns"] is None else int(d["last_end_ns"]),
            started_at_ns=int(d["started_at_ns"]),
            fired_at_ns=None if d["fired_at_ns"] is None else int(d["fired_at_ns"]),
            last_idle_end_ns=int(d["last_idle_end_ns"]),
            idle_ns=int(d["idle_ns"]),
            util_gpu_s=float(d["util_gpu_s"]),
            gpu_s=float(d["gpu_s"]),
            wasted_kwh=float(d["wasted_kwh"]),
            wasted_kg=float(d["wasted_kg"]),
            recent=[(int(a), int(b), float(c), float(e)) for a, b, c, e in d["recent"]],
            gpus=set(d["gpus"]),
            nodes=set(d["nodes"]),
            recovering_since_ns=None if d["recovering_since_ns"] is None else int(d["recovering_since_ns"]),
            labels={str(k): str(v) for k, v in d.get("labels", {}).items()},
        )


Key = tuple[str, str, str]


class AlertEngine:
    """Idle-GPU alerts for a set of rules. Feed closed windows with :meth:`observe`.

    Pure: no clock, no I/O. All times are the windows' sample times, so a replayed trace fires
    at the times the trace says. State round-trips through :meth:`to_dict` / :meth:`from_dict`
    (see ``state.py``) so a restart neither repeats a firing nor loses a resolve.
    """

    def __init__(self, rules: Sequence[AlertRule], *, retain_inactive_s: float = 86_400.0) -> None:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError("rule names must be unique")
        self.rules: tuple[AlertRule, ...] = tuple(rules)
        self._by_name = {r.name: r for r in self.rules}
        self._tracks: dict[Key, _Track] = {}
        self.retain_inactive_ns = round(retain_inactive_s * 1e9)
        self.ignored_windows = 0

    # -- input ---------------------------------------------------------------------------------

    def observe(self, window: ScopeWindow) -> list[AlertEvent]:
        """Apply one closed window to every rule watching its scope; return the changes it caused.

        A window ending at or before (or overlapping) the last one seen for that (rule, scope)
        is ignored and counted in :attr:`ignored_windows`.
        """
        events: list[AlertEvent] = []
        for rule in self.rules:
            if not rule.matches(window):
                continue
            key = (rule.name, window.scope_kind, window.scope_name)
            track = self._tracks.get(key)
            if track is None:
                track = self._tracks[key] = _Track()
            elif track.last_end_ns is not None:
                if window.start_ns < track.last_end_ns:
                    self.ignored_windows += 1
                    continue
                if window.start_ns > track.last_end_ns:
                    self._gap(rule, key, track, track.last_end_ns, window.start_ns, events)
            self._step(rule, key, track, window, events)
            track.last_end_ns = window.end_ns
        return events

    def observe_all(self, windows: Iterable[ScopeWindow]) -> list[AlertEvent]:
        """:meth:`observe` each window in turn; all changes in order."""
        events: list[AlertEvent] = []
        for w in windows:
            events.extend(self.observe(w))
        return events

    def advance_to(self, watermark_ns: int) -> list[AlertEvent]:
        """Declare that every window ending at or before ``watermark_ns`` has been observed.

        Scopes that went quiet (a finished job, a rack switched off) are then in a gap up to the
        watermark: pending stretches are cancelled and firing alerts resolve once the gap has
        lasted ``resolve_after_s``. Inactive scopes quiet for ``retain_inactive_s`` are forgotten.
        """
        events: list[AlertEvent] = []
        for key, track in list(self._tracks.items()):
            rule = self._by_name[key[0]]
            last = track.last_end_ns
            if last is None or watermark_ns <= last:
                continue
            if track.state != INACTIVE:
                self._gap(rule, key, track, last, watermark_ns, events)
            if track.state == INACTIVE and watermark_ns - last >= self.retain_inactive_ns:
                del self._tracks[key]
        return events

    # -- transitions ---------------------------------------------------------------------------

    def _gap(
        self,
        rule: AlertRule,
        key: Key,
        track: _Track,
        gap_start_ns: int,
        gap_end_ns: int,
        events: list[AlertEvent],
    ) -> None:
        """No data over [gap_start_ns, gap_end_ns): not idle (counts as clear)."""
        if track.state == PENDING:
            track.state = INACTIVE
            events.append(self._event("cancelled", rule, key, track, gap_start_ns))
        elif track.state == FIRING:
            if track.recovering_since_ns is None:
                track.recovering_since_ns = gap_start_ns
            resolve_at = track.recovering_since_ns + rule.resolve_after_ns
            if resolve_at <= gap_end_ns:
                self._resolve(rule, key, track, resolve_at, events)

    def _step(
        self, rule: AlertRule, key: Key, track: _Track, w: ScopeWindow, events: list[AlertEvent]
    ) -> None:
        cls = _classify(rule, w)
        if track.state == INACTIVE:
            if cls is _Class.LOW:
                track.start_stretch(w.start_ns)
                track.add_idle(w, rule.for_ns)
                events.append(self._event("pending", rule, key, track, w.end_ns))
                self._maybe_fire(rule, key, track, w.end_ns, events)
        elif track.state == PENDING:
            if cls is _Class.LOW:
                track.add_idle(w, rule.for_ns)
                self._maybe_fire(rule, key, track, w.end_ns, events)
            else:
                track.state = INACTIVE
                events.append(self._event("cancelled", rule, key, track, w.start_ns))
        elif track.state == FIRING:
            if cls is _Class.LOW:
                track.add_idle(w, rule.for_ns)
                track.recovering_since_ns = None
            elif cls is _Class.BAND:
                track.recovering_since_ns = None
            else:
                if track.recovering_since_ns is None:
                    track.recovering_since_ns = w.start_ns
                if w.end_ns - track.recovering_since_ns >= rule.resolve_after_ns:
                    self._resolve(rule, key, track, w.end_ns, events)

    def _maybe_fire(
        self, rule: AlertRule, key: Key, track: _Track, at_ns: int, events: list[AlertEvent]
    ) -> None:
        if at_ns - track.started_at_ns >= rule.for_ns:
            track.state = FIRING
            track.fired_at_ns = at_ns
            track.recovering_since_ns = None
            events.append(self._event("firing", rule, key, track, at_ns))

    def _resolve(
        self, rule: AlertRule, key: Key, track: _Track, at_ns: int, events: list[AlertEvent]
    ) -> None:
        track.state = INACTIVE
        track.recovering_since_ns = None
        events.append(self._event("resolved", rule, key, track, at_ns, resolved_at_ns=at_ns))

    def _event(
        self,
        kind: EventKind,
        rule: AlertRule,
        key: Key,
        track: _Track,
        at_ns: int,
        *,
        resolved_at_ns: int | None = None,
    ) -> AlertEvent:
        rate_kwh, rate_kg = track.rates(rule.for_ns)
        return AlertEvent(
            kind=kind,
            rule=rule.name,
            severity=rule.severity,
            scope_kind=key[1],
            scope_name=key[2],
            at_ns=at_ns,
            started_at_ns=track.started_at_ns,
            fired_at_ns=track.fired_at_ns,
            resolved_at_ns=resolved_at_ns,
            gpus=tuple(sorted(track.gpus)),
            nodes=tuple(sorted(track.nodes)),
            mean_util_pct=track.util_gpu_s / track.gpu_s if track.gpu_s else 0.0,
            idle_s=track.idle_ns / 1e9,
            wasted_energy_kwh=track.wasted_kwh,
            wasted_co2e_kg=track.wasted_kg,
            waste_rate_kwh_per_h=rate_kwh,
            waste_rate_kg_per_h=rate_kg,
            util_below_pct=rule.util_below_pct,
            for_s=rule.for_s,
            labels=tuple(sorted(track.labels.items())),
        )

    # -- views ---------------------------------------------------------------------------------

    def active_alerts(self) -> list[AlertEvent]:
        """A ``still_firing`` snapshot of every firing alert (for periodic Alertmanager re-sends)."""
        out = []
        for key, track in sorted(self._tracks.items()):
            if track.state == FIRING:
                at_ns = track.last_end_ns if track.last_end_ns is not None else track.last_idle_end_ns
                out.append(self._event("still_firing", self._by_name[key[0]], key, track, at_ns))
        return out

    def pending_alerts(self) -> list[AlertEvent]:
        """A ``pending`` snapshot of every pending alert."""
        return [
            self._event("pending", self._by_name[key[0]], key, track, track.last_idle_end_ns)
            for key, track in sorted(self._tracks.items())
            if track.state == PENDING
        ]

    def state_of(self, rule: str, scope_kind: str, scope_name: str) -> str:
        """``"inactive"``, ``"pending"`` or ``"firing"``."""
        track = self._tracks.get((rule, scope_kind, scope_name))
        return track.state if track else INACTIVE

    # -- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (see ``state.py`` for the file)."""
        return {
            "version": STATE_VERSION,
            "ignored_windows": self.ignored_windows,
            "tracks": [
                {"rule": k[0], "scope_kind": k[1], "scope": k[2], **t.to_dict()}
                for k, t in sorted(self._tracks.items())
            ],
        }

    @classmethod
    def from_dict(
        cls, rules: Sequence[AlertRule], data: dict[str, Any], *, retain_inactive_s: float = 86_400.0
    ) -> AlertEngine:
        """Rebuild an engine; state of rules no longer configured is dropped."""
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"alert state version {data.get('version')!r} is not {STATE_VERSION}")
        engine = cls(rules, retain_inactive_s=retain_inactive_s)
        engine.ignored_windows = int(data.get("ignored_windows", 0))
        for item in data["tracks"]:
            if item["rule"] in engine._by_name:
                engine._tracks[(item["rule"], item["scope_kind"], item["scope"])] = _Track.from_dict(item)
        return engine
