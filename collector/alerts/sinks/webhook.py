"""Webhook sink: POST each event as JSON, retrying with exponential backoff and jitter.

Body: ``{"version": 1, "source": "gridwatt", "event": AlertEvent.to_dict()}``. The event's
``event_id`` is also sent as the ``Idempotency-Key`` header, so a receiver can drop the
duplicates that at-least-once delivery (retries, restarts) may cause.
"""

from __future__ import annotations

import asyncio
import random

import aiohttp
from pydantic import Field, field_validator

from gridwatt.collector.alerts.model import AlertEvent
from gridwatt.collector.alerts.sinks.base import (
    AlertSink,
    EventKindName,
    HttpPoster,
    SinkStats,
    SleepFn,
    check_http_url,
    firing_resolved,
)
from gridwatt.collector.alerts.sinks.registry import SINKS
from gridwatt.configfile import StrictModel

PAYLOAD_VERSION = 1


class WebhookSinkConfig(StrictModel):
    """``[[alerts.sinks.webhooks]]``: JSON POST of each event, retried with exponential backoff and jitter."""

    url: str
    timeout_s: float = Field(default=5.0, gt=0)
    retries: int = Field(default=3, ge=0, description="retries after the first attempt")
    backoff_initial_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    headers: dict[str, str] = Field(default_factory=dict)
    events: list[EventKindName] = Field(default_factory=firing_resolved)

    _url = field_validator("url")(check_http_url)


def webhook_payload(event: AlertEvent) -> dict[str, object]:
    return {"version": PAYLOAD_VERSION, "source": "gridwatt", "event": event.to_dict()}


class WebhookSink:
    """Sends the event kinds listed in ``config.events`` (default firing and resolved)."""

    def __init__(
        self,
        config: WebhookSinkConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        sleep: SleepFn = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.name = f"webhook:{config.url}"
        self.stats = SinkStats()
        self._poster = HttpPoster(
            what="webhook",
            timeout_s=config.timeout_s,
            retries=config.retries,
            backoff_initial_s=config.backoff_initial_s,
            backoff_max_s=config.backoff_max_s,
            headers=config.headers,
            session=session,
            sleep=sleep,
            rng=rng,
        )

    async def send(self, event: AlertEvent) -> bool:
        if event.kind not in self.config.events:
            self.stats.skipped += 1
            return True
        return await self._poster.post_json(
            self.config.url,
            webhook_payload(event),
            self.stats,
            f"{event.kind} {event.rule}/{event.scope_name}",
            headers={"Idempotency-Key": event.event_id},
        )

    async def close(self) -> None:
        await self._poster.close()


@SINKS.register("webhooks", WebhookSinkConfig)
def webhook_sinks(tables: list[WebhookSinkConfig], session: aiohttp.ClientSession | None) -> list[AlertSink]:
    """``[[alerts.sinks.webhooks]]``: one sink per webhook."""
    return [WebhookSink(w, session=session) for w in tables]
