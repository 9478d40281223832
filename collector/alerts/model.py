"""The alert package's input contract (ScopeWindow) and output (AlertEvent).

Both are plain frozen dataclasses with no dependency on the rest of the collector,
so the engine can be fed from live windows, a replayed trace or a test.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gridwatt.timeutil import format_time_ns

SCOPE_KINDS: tuple[str, ...] = ("cluster", "group", "rack", "job", "slurm_job", "slurm_user")
Labels = tuple[tuple[str, str], ...]

EventKind = Literal["pending", "firing", "resolved", "cancelled", "still_firing"]
"""``pending``: first idle window; ``firing``: idle for ``for_s``; ``resolved``: hysteresis met;
``cancelled``: a pending stretch ended before firing; ``still_firing``: a snapshot of a firing
alert for periodic re-sends (never emitted by ``observe``)."""


@dataclass(frozen=True)
class ScopeWindow:
    """One scope over one closed window ``[start_ns, end_ns)``, in sample time (ns since the epoch).

    ``mean_util_pct`` is the GPU-seconds-weighted mean utilisation (0–100) of the GPUs that
    reported; ``gpu_count`` how many did. Energy is IT (GPU) and facility (× PUE) energy in kWh,
    ``co2e_kg`` the emissions of the facility energy.
    """

    scope_kind: str
    scope_name: str
    start_ns: int
    end_ns: int
    gpu_count: int
    nodes: tuple[str, ...]
    gpus: tuple[str, ...]
    mean_util_pct: float
    it_energy_kwh: float
    facility_energy_kwh: float
    co2e_kg: float
    #: Who to talk to, sorted (key, value) pairs: Slurm scopes carry ``user`` and ``account``.
    labels: Labels = ()

    def __post_init__(self) -> None:
        if self.scope_kind not in SCOPE_KINDS:
            raise ValueError(f"scope_kind {self.scope_kind!r} is not one of {', '.join(SCOPE_KINDS)}")
        if self.end_ns <= self.start_ns:
            raise ValueError(
                f"window of {self.scope_name!r}: end_ns {self.end_ns} <= start_ns {self.start_ns}"
            )
        if self.gpu_count < 0:
            raise ValueError(f"window of {self.scope_name!r}: negative gpu_count {self.gpu_count}")
        for name in ("mean_util_pct", "it_energy_kwh", "facility_energy_kwh", "co2e_kg"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"window of {self.scope_name!r}: {name} must be finite and >= 0, got {value}"
                )
        if self.mean_util_pct > 100:
            raise ValueError(f"window of {self.scope_name!r}: mean_util_pct {self.mean_util_pct} > 100")

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def combine_windows(scope_kind: str, scope_name: str, windows: Sequence[ScopeWindow]) -> ScopeWindow:
    """Merge windows of the same span (e.g. racks of a partition) into one scope's window.

    Energy and emissions add; utilisation is weighted by each window's ``gpu_count``
    (every input covers the same span, so that is its GPU-seconds up to partial reporting).
    """
    if not windows:
        raise ValueError("combine_windows needs at least one window")
    start_ns, end_ns = windows[0].start_ns, windows[0].end_ns
    if any(w.start_ns != start_ns or w.end_ns != end_ns for w in windows):
        raise ValueError("combine_windows: all windows must cover the same [start_ns, end_ns)")
    gpu_count = sum(w.gpu_count for w in windows)
    util = sum(w.mean_util_pct * w.gpu_count for w in windows) / gpu_count if gpu_count else 0.0
    return ScopeWindow(
        scope_kind=scope_kind,
        scope_name=scope_name,
        start_ns=start_ns,
        end_ns=end_ns,
        gpu_count=gpu_count,
        nodes=tuple(sorted({n for w in windows for n in w.nodes})),
        gpus=tuple(sorted({g for w in windows for g in w.gpus})),
        mean_util_pct=min(util, 100.0),
        it_energy_kwh=sum(w.it_energy_kwh for w in windows),
        facility_energy_kwh=sum(w.facility_energy_kwh for w in windows),
        co2e_kg=sum(w.co2e_kg for w in windows),
    )


def _iso(t_ns: int | None) -> str | None:
    return None if t_ns is None else format_time_ns(t_ns)


@dataclass(frozen=True)
class AlertEvent:
    """One change of one alert (rule × scope), with the numbers of its idle stretch so far.

    Times are sample time in ns. ``started_at_ns`` is the start of the idle stretch,
    ``fired_at_ns`` the end of the window that completed ``for_s``, ``at_ns`` when this change
    happened. ``idle_s`` counts the idle windows' seconds; ``mean_util_pct`` is their
    GPU-seconds-weighted mean; ``wasted_*`` sum the facility energy and emissions of every idle
    window since ``started_at_ns``; ``waste_rate_*`` are per hour over the last ``for_s``.
    """

    kind: EventKind
    rule: str
    severity: str
    scope_kind: str
    scope_name: str
    at_ns: int
    started_at_ns: int
    fired_at_ns: int | None
    resolved_at_ns: int | None
    gpus: tuple[str, ...]
    nodes: tuple[str, ...]
    mean_util_pct: float
    idle_s: float
    wasted_energy_kwh: float
    wasted_co2e_kg: float
    waste_rate_kwh_per_h: float
    waste_rate_kg_per_h: float
    util_below_pct: float
    for_s: float
    #: The scope's labels from its latest idle window (``user``, ``account`` for Slurm scopes).
    labels: Labels = ()

    @property
    def key(self) -> tuple[str, str, str]:
        """Identifies the alert: (rule, scope_kind, scope_name)."""
        return (self.rule, self.scope_kind, self.scope_name)

    @property
    def event_id(self) -> str:
        """Deterministic id of this change (same stretch, same kind → same id), for receivers' dedup."""
        raw = f"{self.rule}\x1f{self.scope_kind}\x1f{self.scope_name}\x1f{self.started_at_ns}\x1f{self.kind}"
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ns integers plus ISO 8601 UTC strings, lists for tuples."""
        return {
            "event_id": self.event_id,
            "kind": self.kind,
            "rule": self.rule,
            "severity": self.severity,
            "scope_kind": self.scope_kind,
            "scope": self.scope_name,
            "at_ns": self.at_ns,
            "at": _iso(self.at_ns),
            "started_at_ns": self.started_at_ns,
            "started_at": _iso(self.started_at_ns),
            "fired_at_ns": self.fired_at_ns,
            "fired_at": _iso(self.fired_at_ns),
            "resolved_at_ns": self.resolved_at_ns,
            "resolved_at": _iso(self.resolved_at_ns),
            "gpus": list(self.gpus),
            "nodes": list(self.nodes),
            "mean_util_pct": self.mean_util_pct,
            "duration_s": self.idle_s,
            "wasted_energy_kwh": self.wasted_energy_kwh,
            "wasted_co2e_kg": self.wasted_co2e_kg,
            "waste_rate_kwh_per_h": self.waste_rate_kwh_per_h,
            "waste_rate_kg_per_h": self.waste_rate_kg_per_h,
            "util_below_pct": self.util_below_pct,
            "for_s": self.for_s,
            "labels": dict(self.labels),
        }
