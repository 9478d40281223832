"""Prometheus Alertmanager sink (API v2): ``POST {url}/api/v2/alerts`` with a JSON list of alerts.

Each alert has ``labels`` (alertname = rule name, scope_kind, scope, severity, and rack / job /
group named after the scope, plus ``extra_labels``), ``annotations`` (summary, description
and the numbers one by one), ``startsAt`` (start of the idle stretch, sample time),
``endsAt`` and ``generatorURL`` (when configured).

Alertmanager expires an alert whose ``endsAt`` has passed, so while firing ``endsAt`` is
wall-clock now + ``ends_at_after_s`` and the alert must be re-sent every ``resend_interval_s``
(:meth:`AlertmanagerSink.resend` with the engine's ``active_alerts()``, e.g. from
:meth:`AlertmanagerSink.run_resend_loop`). A resolve sends ``endsAt`` = the resolve time
(no later than now), which ends the alert at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp
from pydantic import Field, field_validator, model_validator

from gridwatt.collector.alerts.model import AlertEvent
from gridwatt.collector.alerts.sinks.base import AlertSink, HttpPoster, SinkStats, SleepFn, check_http_url
from gridwatt.collector.alerts.sinks.registry import SINKS
from gridwatt.configfile import StrictModel

log = logging.getLogger("gridwatt.alerts")

_SCOPE_LABEL = {"rack": "rack", "job": "job", "group": "group", "slurm_job": "job", "slurm_user": "user"}
#: Event labels that identify an alert's owner and go to Alertmanager as labels (the rest: annotations).
_OWNER_LABELS = ("user", "account")
_SENT_KINDS = ("firing", "still_firing", "resolved")
MAX_LISTED = 32


class AlertmanagerSinkConfig(StrictModel):
    """``[alerts.sinks.alertmanager]``: Prometheus Alertmanager v2 (``POST /api/v2/alerts``); firing
    alerts are re-sent periodically."""

    url: str = Field(description="base URL, e.g. http://alertmanager:9093")
    timeout_s: float = Field(default=5.0, gt=0)
    retries: int = Field(default=3, ge=0)
    backoff_initial_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    resend_interval_s: float = Field(default=60.0, gt=0)
    ends_at_after_s: float = Field(
        default=300.0, gt=0, description="a firing alert's endsAt = now + this; must exceed resend_interval_s"
    )
    generator_url: str | None = Field(
        default=None, description="base of generatorURL, e.g. the /v1/alerts URL"
    )
    extra_labels: dict[str, str] = Field(default_factory=dict)

    _url = field_validator("url")(check_http_url)

    @model_validator(mode="after")
    def _check(self) -> AlertmanagerSinkConfig:
        if self.ends_at_after_s <= self.resend_interval_s:
            raise ValueError(
                f"ends_at_after_s ({self.ends_at_after_s:g}) must exceed resend_interval_s "
                f"({self.resend_interval_s:g}), or Alertmanager expires alerts between re-sends"
            )
        return self


def rfc3339(t_ns: int) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2024-03-01T10:00:00.000Z``."""
    dt = datetime.fromtimestamp(t_ns // 1_000_000 / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")


def alert_labels(event: AlertEvent, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The identifying labels of an event's alert (the same for every event of one alert)."""
    labels = dict(extra or {})
    labels.update(
        {
            "alertname": event.rule,
            "scope_kind": event.scope_kind,
            "scope": event.scope_name,
            "severity": event.severity,
        }
    )
    if event.scope_kind in _SCOPE_LABEL:
        labels[_SCOPE_LABEL[event.scope_kind]] = event.scope_name
    labels.update((k, v) for k, v in event.labels if k in _OWNER_LABELS and v)
    return labels


def alert_annotations(event: AlertEvent) -> dict[str, str]:
    """Human summary and description, and each number as its own annotation."""
    minutes = event.idle_s / 60
    summary = (
        f"{len(event.gpus)} GPU(s) of {event.scope_kind} {event.scope_name} idle "
        f"(mean {event.mean_util_pct:.1f}% < {event.util_below_pct:g}%) for {minutes:.0f} min"
    )
    description = (
        f"{event.scope_kind} {event.scope_name}: {len(event.gpus)} GPU(s) on {len(event.nodes)} node(s) "
        f"at a mean utilisation of {event.mean_util_pct:.2f}% for {event.idle_s:.0f} s "
        f"(rule {event.rule}: below {event.util_below_pct:g}% for {event.for_s:g} s). "
        f"Wasted so far: {event.wasted_energy_kwh:.3f} kWh facility energy, "
        f"{event.wasted_co2e_kg:.3f} kg CO2e; now wasting {event.waste_rate_kwh_per_h:.3f} kWh/h, "
        f"{event.waste_rate_kg_per_h:.3f} kg CO2e/h. Nodes: {_listed(event.nodes)}."
    )
    return {
        "summary": summary,
        "description": description,
        "mean_util_pct": f"{event.mean_util_pct:.4f}",
        "idle_s": f"{event.idle_s:g}",
        "wasted_energy_kwh": f"{event.wasted_energy_kwh:.6f}",
        "wasted_co2e_kg": f"{event.wasted_co2e_kg:.6f}",
        "waste_rate_kwh_per_h": f"{event.waste_rate_kwh_per_h:.6f}",
        "waste_rate_kg_per_h": f"{event.waste_rate_kg_per_h:.6f}",
        "gpus": _listed(event.gpus),
        "nodes": _listed(event.nodes),
        **{k: v for k, v in event.labels if k not in _OWNER_LABELS},
    }


class AlertmanagerSink:
    """Posts firing / still_firing / resolved events to Alertmanager; other kinds are skipped."""

    def __init__(
        self,
        config: AlertmanagerSinkConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        sleep: SleepFn = asyncio.sleep,
        rng: random.Random | None = None,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.config = config
        self.name = f"alertmanager:{config.url}"
        self.url = config.url.rstrip("/") + "/api/v2/alerts"
        self.stats = SinkStats()
        self._now_ns = now_ns
        self._poster = HttpPoster(
            what="alertmanager",
            timeout_s=config.timeout_s,
            retries=config.retries,
            backoff_initial_s=config.backoff_initial_s,
            backoff_max_s=config.backoff_max_s,
            session=session,
            sleep=sleep,
            rng=rng,
        )

    def _generator_url(self, event: AlertEvent) -> str | None:
        base = self.config.generator_url
        if not base:
            return None
        query = urlencode({"rule": event.rule, "scope_kind": event.scope_kind, "scope": event.scope_name})
        return f"{base}{'&' if '?' in base else '?'}{query}"

    def to_alert(self, event: AlertEvent) -> dict[str, Any]:
        """The v2 ``postableAlert`` for one event."""
        now_ns = self._now_ns()
        if event.kind == "resolved":
            resolved_ns = event.resolved_at_ns if event.resolved_at_ns is not None else event.at_ns
            ends_ns = max(min(resolved_ns, now_ns), event.started_at_ns + 1_000_000)
        else:
            ends_ns = max(now_ns, event.started_at_ns) + round(self.config.ends_at_after_s * 1e9)
        alert: dict[str, Any] = {
            "labels": alert_labels(event, self.config.extra_labels),
            "annotations": alert_annotations(event),
            "startsAt": rfc3339(event.started_at_ns),
            "endsAt": rfc3339(ends_ns),
        }
        generator = self._generator_url(event)
        if generator:
            alert["generatorURL"] = generator
        return alert

    async def send(self, event: AlertEvent) -> bool:
        if event.kind not in _SENT_KINDS:
            self.stats.skipped += 1
            return True
        return await self._poster.post_json(
            self.url, [self.to_alert(event)], self.stats, f"{event.kind} {event.rule}/{event.scope_name}"
        )

    async def resend(self, active: Sequence[AlertEvent]) -> bool:
        """Re-post every firing alert in one request, pushing their ``endsAt`` forward."""
        alerts = [self.to_alert(e) for e in active if e.kind in ("firing", "still_firing")]
        if not alerts:
            return True
        return await self._poster.post_json(
            self.url, alerts, self.stats, f"re-send of {len(alerts)} alert(s)"
        )

    async def run_resend_loop(
        self, snapshot: Callable[[], Sequence[AlertEvent]], stop: asyncio.Event
    ) -> None:
        """Every ``resend_interval_s`` (wall clock), :meth:`resend` ``snapshot()`` until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.resend(snapshot())
            except Exception:  # a bug in a snapshot must not end the loop
                log.exception("alertmanager: re-send failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.config.resend_interval_s)

    async def close(self) -> None:
        await self._poster.close()


@SINKS.register("alertmanager", AlertmanagerSinkConfig)
def alertmanager_sinks(tables: list[AlertmanagerSinkConfig],
                       session: aiohttp.ClientSession | None) -> list[AlertSink]:
    """``[alerts.sinks.alertmanager]``: the Alertmanager v2 API, when configured."""
    return [AlertmanagerSink(t, session=session) for t in tables]
