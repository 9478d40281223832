"""The collector's ingest ledger (counts of samples and batches by outcome), shared by ingest and metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class IngestStats:
    """The ingest ledger since start, in samples and in batches.

    Between any two steps of the event loop (so at every scrape)::

        samples_received == samples_stored + samples_rejected + samples_deferred + samples_in_flight

    and the same for batches, where

    * received: every sample of every batch that parsed (a malformed message has no countable
      samples; it is one received and rejected batch, reason ``malformed``);
    * stored: acknowledged OK, or stored although the batch was answered INVALID_ARGUMENT because
      InfluxDB refused other samples of it (that batch counts as rejected in the batch ledger);
    * rejected: answered INVALID_ARGUMENT; never to be resent (by reason: ``validation``,
      ``malformed``, ``influxdb_bad_points`` for HTTP 400/422, ``influxdb_too_large`` for 413);
    * deferred: answered UNAVAILABLE, or the stream went away before the answer: not stored as
      far as the agent knows, so the agent keeps them and resends them (by reason:
      ``store_unavailable``, ``overload``, ``intensity_unavailable``, ``cancelled``, ``error``);
    * in flight: being handled now.

    A resent sample is received (and stored) again: the counts are of deliveries, not of
    distinct samples; InfluxDB holds each distinct sample once.
    """

    batches_received: int = 0
    samples_received: int = 0
    batches_stored: int = 0
    samples_stored: int = 0
    batches_in_flight: int = 0
    samples_in_flight: int = 0
    batches_retried: int = 0
    samples_rejected_by_reason: Counter[str] = field(default_factory=Counter)
    batches_rejected_by_reason: Counter[str] = field(default_factory=Counter)
    samples_deferred_by_reason: Counter[str] = field(default_factory=Counter)
    batches_deferred_by_reason: Counter[str] = field(default_factory=Counter)

    @property
    def samples_rejected(self) -> int:
        return sum(self.samples_rejected_by_reason.values())

    @property
    def samples_deferred(self) -> int:
        return sum(self.samples_deferred_by_reason.values())

    @property
    def batches_rejected(self) -> int:
        return sum(self.batches_rejected_by_reason.values())

    @property
    def batches_deferred(self) -> int:
        return sum(self.batches_deferred_by_reason.values())

    def balanced(self) -> bool:
        """Whether the ledger adds up (see the class docstring)."""
        return (
            self.samples_received
            == self.samples_stored + self.samples_rejected + self.samples_deferred + self.samples_in_flight
            and self.batches_received
            == self.batches_stored + self.batches_rejected + self.batches_deferred + self.batches_in_flight
        )
