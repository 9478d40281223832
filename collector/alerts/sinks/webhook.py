"""Webhook sink: POST each event as JSON, retrying with exponential backoff and jitter.

Body: ``{"version": 1, "source": "gridwatt", "event": AlertEvent.to_dict()}``. The event's
``event_id`` is also sent as the ``Idempotency-Key`` header, so a receiver can drop the
duplicates that at-least-once delivery (retries, restarts) may cause.
"""

from __future__ import annotations

import asyncio
import random

import aiohttp

from gridwatt.collector.alerts.model import AlertEvent
from gridwatt.collector.alerts.rules import SinksConfig, WebhookSinkConfig
from gridwatt.collector.alerts.sinks.base import AlertSink, HttpPoster, SinkStats, SleepFn
from gridwatt.collector.alerts.sinks.registry import SINKS

PAYLOAD_VERSION = 1


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


@SINKS.register("webhooks")
def webhook_sinks(config: SinksConfig, session: aiohttp.ClientSession | None) -> list[AlertSink]:
    """``[[alerts.sinks.webhooks]]``: one sink per webhook."""
    return [WebhookSink(w, session=session) for w in config.webhooks]
