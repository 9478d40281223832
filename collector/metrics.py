"""Prometheus metrics of the collector, served as text on the HTTP port at ``/metrics``.

Two registries:

* one per running collector (:class:`CollectorMetrics`): the sample ledger (read from
  ``IngestStats`` at scrape time, so the metrics and the ledger can never disagree), InfluxDB
  write latency, retries, health and auth alarms, connected agent streams;
* :data:`PROCESS_REGISTRY`, process-wide, for code that has no handle on a collector: the
  intensity providers count their failures in :data:`PROVIDER_ERRORS`
  (``PROVIDER_ERRORS.labels(provider="electricitymaps:DE").inc()``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gridwatt.collector.ingest_stats import IngestStats


class LiveView(Protocol):
    """What /metrics appends after these metrics: collector/live_metrics.py's LiveAccounts."""

    def render(self, openmetrics: bool = False) -> str: ...


PREFIX = "gridwatt_collector_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

disable_created_metrics()  # no *_created series: they double the exposition and nobody reads them

PROCESS_REGISTRY = CollectorRegistry()
PROVIDER_ERRORS = Counter(
    PREFIX + "intensity_provider_errors",
    "Failed calls to a grid intensity provider (HTTP errors, timeouts, no data).",
    ["provider"],
    registry=PROCESS_REGISTRY,
)

#: Seconds; InfluxDB writes of a few thousand lines take milliseconds to seconds.
WRITE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _LedgerCollector(Collector):
    """Exports an IngestStats and the number of connected streams as they are at scrape time."""

    def __init__(self, stats: Callable[[], IngestStats], streams: Callable[[], int]) -> None:
        self._stats = stats
        self._streams = streams

    def collect(self) -> Iterable[Metric]:
        s = self._stats()
        yield from _counters("samples", s.samples_received, s.samples_stored, s.samples_rejected_by_reason,
                             s.samples_deferred_by_reason)
        yield from _counters("batches", s.batches_received, s.batches_stored, s.batches_rejected_by_reason,
                             s.batches_deferred_by_reason)
        yield GaugeMetricFamily(PREFIX + "samples_in_flight", "Samples being stored now.",
                                s.samples_in_flight)
        yield GaugeMetricFamily(PREFIX + "batches_in_flight", "Batches being stored now.",
                                s.batches_in_flight)
        yield CounterMetricFamily(PREFIX + "batches_retried",
                                  "Batches whose InfluxDB write needed at least one retry or split.",
                                  s.batches_retried)
        yield GaugeMetricFamily(PREFIX + "agent_streams", "Agent ingest streams connected now.",
                                self._streams())

    def describe(self) -> Iterable[Metric]:
        return []


def _counters(unit: str, received: int, stored: int, rejected: dict[str, int],
              deferred: dict[str, int]) -> Iterator[Metric]:
    yield CounterMetricFamily(PREFIX + f"{unit}_received", f"{unit.capitalize()} received from agents.",
                              received)
    yield CounterMetricFamily(PREFIX + f"{unit}_stored", f"{unit.capitalize()} acknowledged as stored.",
                              stored)
    rej = CounterMetricFamily(PREFIX + f"{unit}_rejected",
                              f"{unit.capitalize()} rejected as bad (never resent), by reason.",
                              labels=["reason"])
    for reason, n in sorted(rejected.items()):
        rej.add_metric([reason], n)
    yield rej
    dfr = CounterMetricFamily(PREFIX + f"{unit}_deferred",
                              f"{unit.capitalize()} answered UNAVAILABLE (not stored; the agent keeps and "
                              "resends them), by reason.", labels=["reason"])
    for reason, n in sorted(deferred.items()):
        dfr.add_metric([reason], n)
    yield dfr


#: The window rollup's counters on /metrics: name -> (help, label name); the rollup's keys
#: (``RackRollup.counters``) are ``name`` or ``name:label value``.
ROLLUP_FAMILIES: dict[str, tuple[str, str]] = {
    "rollup_queries": ("InfluxQL reads made for windows and held state, by kind (node: a node's job "
                       "points, rack: a rack's node points, rack_ahead: those of them reading a held "
                       "rack's next window ahead, fill: a node's held state, interval: the "
                       "one-GPU-second check, marks: the writer marks final node read-backs read "
                       "first).", "kind"),
    "rollup_read_backs": ("Final read-backs run of windows written from held state, by kind.", "kind"),
    "rollup_read_back_mismatches": ("Final read-backs that found other values than those held "
                                    "(another replica or a rewrite wrote there), by kind.", "kind"),
    "rollup_read_backs_again": ("Nodes a read-back read again under their lock: their windows changed "
                                "during its first read (made without the lock).", ""),
    "rollup_points_kept": ("Window points a read-back or recompute found stored with the very values it "
                           "would write, and so did not write again, by kind (node: node and job_window "
                           "points of final node read-backs, rack: rack points).", "kind"),
    "rollup_points_rewritten": ("Node and job_window points final node read-backs wrote again: the stored "
                                "ones differed from the job points' sums (another replica or a rewrite "
                                "wrote there after this replica's last write).", ""),
    "rollup_read_back_sums_skipped": ("Node windows whose final read-back found only this instance's "
                                      "writer mark, so read no job sums (no other instance wrote job "
                                      "points there).", ""),
    "rollup_settle_recomputes": ("Rack windows recomputed once more replica_settle_s after a read.", ""),
    "rollup_one_writes": ("Batches whose node windows (windows=node), and also rack windows "
                          "(windows=rack), were written in the batch's own store write.", "windows"),
    "rollup_rack_turns": ("Store writes that carried the batches of one held rack together with its rack "
                          "points (a turn: the batches that found the rack busy wait for it together).", ""),
    "rollup_rack_leases": ("Rack windows of racks not held that rack turns summed from a lease (a read "
                           "younger than replica_settle_s / 2 and this replica's writes since: windows), "
                           "and turns whose write ended after a lease ran out, so that their batches "
                           "recomputed the rack from a read (late).", "kind"),
}


class _RollupCollector(Collector):
    """Exports the window rollup's counters (collector/rollup.py ``RackRollup.counters``) at scrape time."""

    def __init__(self, counters: Callable[[], dict[str, int]], pending: Callable[[], int]) -> None:
        self._counters = counters
        self._pending = pending

    def collect(self) -> Iterable[Metric]:
        values = self._counters()
        for name, (text, label) in ROLLUP_FAMILIES.items():
            family = CounterMetricFamily(PREFIX + name, text, labels=[label] if label else None)
            for key, value in sorted(values.items()):
                base, _, label_value = key.partition(":")
                if base == name:
                    family.add_metric([label_value] if label else [], value)
            yield family
        yield GaugeMetricFamily(PREFIX + "rollup_pending_read_backs",
                                "Nodes and racks whose windows wait for their final read-back, plus "
                                "read-backs and settle recomputes scheduled or running.", self._pending())

    def describe(self) -> Iterable[Metric]:
        return []


class StoreMetrics:
    """What the InfluxDB store reports: latency, retries, splits, health, alarms."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.write_duration = Histogram(
            PREFIX + "influxdb_write_duration_seconds",
            "Duration of one InfluxDB write request (any outcome).", buckets=WRITE_BUCKETS_S, registry=r,
        )
        self.group_writes = Counter(
            PREFIX + "influxdb_group_writes",
            "Group commits: writes carrying the lines of one or more callers (batches, window points).",
            registry=r,
        )
        self.group_callers = Counter(
            PREFIX + "influxdb_group_callers",
            "Callers carried by group writes (÷ influxdb_group_writes: callers per write).", registry=r,
        )
        self.write_retries = Counter(
            PREFIX + "influxdb_write_retries",
            "InfluxDB write requests tried again, by reason (timeout, connection, http_5xx, http_429, ...).",
            ["reason"], registry=r,
        )
        self.write_splits = Counter(
            PREFIX + "influxdb_write_splits",
            "Write requests split in two: HTTP 413 (too large) or 400/422 (to isolate bad points).",
            ["reason"], registry=r,
        )
        self.points_rejected = Counter(
            PREFIX + "influxdb_points_rejected", "Points InfluxDB refused (HTTP 400/422/413), by status.",
            ["status"], registry=r,
        )
        self.auth_failures = Counter(
            PREFIX + "influxdb_auth_failures",
            "InfluxDB answers 401/403 (alarm: credentials or privileges are wrong; data is kept).",
            registry=r,
        )
        self.auth_failing = Gauge(
            PREFIX + "influxdb_auth_failing",
            "1 while InfluxDB refuses our credentials (alarm), else 0.", registry=r,
        )
        self.up = Gauge(PREFIX + "influxdb_up", "1 while InfluxDB accepts writes, else 0.", registry=r)
        self.up.set(1)


class CollectorMetrics(StoreMetrics):
    """All metrics of one running collector, in one registry."""

    def __init__(self) -> None:
        super().__init__(CollectorRegistry())
        self._ledger: _LedgerCollector | None = None
        self._rollup: _RollupCollector | None = None
        #: Accounted energy and carbon (collector/live_metrics.py), appended to the exposition.
        self.live: LiveView | None = None

    def bind_ledger(self, stats: Callable[[], IngestStats], streams: Callable[[], int]) -> None:
        """Export the ingest ledger (once)."""
        if self._ledger is None:
            self._ledger = _LedgerCollector(stats, streams)
            self.registry.register(self._ledger)

    def bind_rollup(self, counters: Callable[[], dict[str, int]], pending: Callable[[], int]) -> None:
        """Export the window rollup's counters (once)."""
        if self._rollup is None:
            self._rollup = _RollupCollector(counters, pending)
            self.registry.register(self._rollup)

    def render(self) -> bytes:
        """The Prometheus text exposition of this collector and of the process-wide registry."""
        return generate_latest(self.registry) + generate_latest(PROCESS_REGISTRY)
