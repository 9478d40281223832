"""gRPC ingest: validate → account → store → recompute rack windows → acknowledge.

An Ack is sent only after the batch is stored. A bad batch is answered with
INVALID_ARGUMENT naming the problem, and nothing of it is stored; the stream
and every other agent carry on. When InfluxDB refuses only some points of a batch
(HTTP 400/422/413), the answer is INVALID_ARGUMENT naming them, with the number of
samples that were stored in ``stored_samples``. When InfluxDB cannot store now, or
more than ``max_in_flight_batches`` batches are being stored, the answer is UNAVAILABLE
with a retry hint (``retry_after_ms``): the agent keeps the batch and resends it.

With node tokens configured (collector/auth.py) every call must carry a valid token:
UNAUTHENTICATED ends the call before anything is read, and a batch for another node than
the token's ends the stream with PERMISSION_DENIED, storing nothing of it.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError

from gridwatt import __version__
from gridwatt.collector.auth import AuthError, Identity, NodeAuth
from gridwatt.collector.batch_scan import BatchScan, gpu_spans
from gridwatt.collector.bounds import JobSeriesBudget, NodeSlots
from gridwatt.collector.ingest_stats import IngestStats
from gridwatt.collector.intensity.base import IntensityUnavailable
from gridwatt.collector.intervals import first_conflict, stored_intervals
from gridwatt.collector.ledger import LedgerBook
from gridwatt.collector.node_state import NodeHeld
from gridwatt.collector.points import host_lines, prepare_batch, sample_digests
from gridwatt.collector.rollup import RackRollup
from gridwatt.collector.store import InfluxStore, QueryError, StoreRejected, StoreUnavailable
from gridwatt.collector.topology import Placement, Topology
from gridwatt.collector.validation import BatchRejected, Limits, validate_batch, validate_host_samples
from gridwatt.names import shown
from gridwatt.v1 import telemetry_pb2 as pb

log = logging.getLogger("gridwatt.collector.ingest")

CODE_OK = grpc.StatusCode.OK.value[0]
CODE_INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
CODE_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
#: Trailing metadata key of an UNAVAILABLE unary Write: milliseconds to wait before resending.
RETRY_AFTER_MD = "retry-after-ms"


@dataclass
class _Outcome:
    """What became of one batch: its Ack and its entries in the ledger."""

    ack: pb.Ack
    stored: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    deferred: str = ""  # reason, when the batch was answered UNAVAILABLE
    rejected_batch: str = ""  # reason, when the batch was answered INVALID_ARGUMENT
    retried: bool = False
    #: to await before the Ack, after the node's lock is released (its rack windows)
    after: Callable[[], Awaitable[None]] | None = None


@dataclass
class NodeBounds:
    """Per-node bounds (collector/bounds.py) and the one-GPU-second-once check (collector/intervals.py)."""

    jobs: JobSeriesBudget = field(default_factory=lambda: JobSeriesBudget(1_000_000))
    in_flight: NodeSlots = field(default_factory=lambda: NodeSlots(1_000_000))
    check_intervals: bool = False
    max_interval_ns: int = 3600 * 1_000_000_000


def _unavailable(batch: pb.Batch, n: int, reason: str, message: str, retry_after_s: float) -> _Outcome:
    ack = pb.Ack(batch_id=batch.batch_id, code=CODE_UNAVAILABLE, message=message,
                 retry_after_ms=max(1, round(retry_after_s * 1000)))
    return _Outcome(ack, deferred=reason)


class Ingestor:
    """Turns one batch into stored points and an Ack (transport-independent); keeps the ledger."""

    def __init__(
        self,
        topology: Topology,
        store: InfluxStore,
        rollup: RackRollup,
        limits: Limits,
        max_in_flight_batches: int = 64,
        overload_retry_after_s: float = 1.0,
        rack_windows: bool = True,
        on_stored: Callable[[str, str, int, int], None] | None = None,
        on_estimated: Callable[[str, int, int], None] | None = None,
        unknown_node_retry_after_s: float = 30.0,
        bounds: NodeBounds | None = None,
    ) -> None:
        self.bounds = bounds or NodeBounds()
        #: One lock per node: its batches are checked against the store and written one at a time.
        self._node_locks: dict[str, asyncio.Lock] = {}
        self.on_stored = on_stored
        #: called with (zone, start_ns, end_ns) after a batch accounted with estimated intensity is stored
        self.on_estimated = on_estimated
        #: Called with (batch, placement, intensity, pue, first_line, refused lines, scan) once stored.
        self.on_accounted: Callable[..., None] | None = None
        #: True while batches are turned away for overload; listeners hear every change.
        self.overloaded = False
        self.overload_listeners: list[Callable[[bool], None]] = []
        self.topology = topology
        self.store = store
        self.rollup = rollup
        self.limits = limits
        self.max_in_flight_batches = max_in_flight_batches
        self.overload_retry_after_s = overload_retry_after_s
        self.rack_windows = rack_windows
        self.stats = IngestStats()
        self.ledgers = LedgerBook()
        #: Batches answered UNAVAILABLE because their node is in no rack (config mistake).
        self.unknown_node_batches = 0
        self.unknown_node_retry_after_s = unknown_node_retry_after_s
        self._unknown_logged: dict[str, float] = {}
        #: Rejections are logged at most 10 a minute per node (a hostile node cannot flood the log).
        self._log_budget = LogBudget(10, 60.0)

    def count_malformed(self) -> None:
        """A message that is not a Batch: one received and rejected batch, no samples."""
        self.stats.batches_received += 1
        self.stats.batches_rejected_by_reason["malformed"] += 1

    async def handle(self, batch: pb.Batch, hold: bool = True) -> pb.Ack:
        """Store one batch and answer it. ``hold``: the node's state may be held between batches
        (collector/node_state.py); False for a unary Write, whose node may stream elsewhere."""
        n = len(batch.gpu_samples)
        st = self.stats
        st.batches_received += 1
        st.samples_received += n
        if st.batches_in_flight >= self.max_in_flight_batches:
            self._set_overloaded(True)
            outcome = _unavailable(
                batch, n, "overload",
                f"collector overloaded: {st.batches_in_flight} batches in flight (max_in_flight_batches); "
                "not stored, resend later", self.overload_retry_after_s,
            )
            self._record(outcome, n)
            return outcome.ack
        node_slots = self.bounds.in_flight
        if not node_slots.try_take(batch.node):
            outcome = _unavailable(
                batch, n, "node_overload",
                f"node_overload: {node_slots.limit} batches of this node are being stored already "
                "(server.max_in_flight_batches_per_node); not stored, resend later",
                self.overload_retry_after_s,
            )
            self._record(outcome, n)
            return outcome.ack
        st.batches_in_flight += 1
        st.samples_in_flight += n
        done: _Outcome | None = None
        try:
            done = await self._process(batch, n, hold)
        except Exception as exc:  # unforeseen: not stored as far as the agent knows; it resends
            log.exception("batch %d from %r failed", batch.batch_id, batch.node)
            done = _unavailable(batch, n, "error", f"collector error, not stored: {exc}",
                                self.store.retry_after_s())
        finally:
            # in the same event-loop step as the ledger entries below, so the ledger always adds up
            st.batches_in_flight -= 1
            st.samples_in_flight -= n
            node_slots.release(batch.node)
            if self.overloaded and st.batches_in_flight <= self.max_in_flight_batches // 2:
                self._set_overloaded(False)
            if done is None:  # cancelled: the stream went away; the agent still holds the batch
                st.batches_deferred_by_reason["cancelled"] += 1
                st.samples_deferred_by_reason["cancelled"] += n
            else:
                self._record(done, n)
        return done.ack

    def _set_overloaded(self, overloaded: bool) -> None:
        """Overloaded from the first batch turned away until in-flight falls to half the bound."""
        if overloaded == self.overloaded:
            return
        self.overloaded = overloaded
        (log.warning if overloaded else log.info)(
            "collector %s: %d batches in flight (max_in_flight_batches %d)",
            "overloaded, turning batches away" if overloaded else "no longer overloaded",
            self.stats.batches_in_flight, self.max_in_flight_batches,
        )
        for listener in self.overload_listeners:
            listener(overloaded)

    def _record(self, outcome: _Outcome, n: int) -> None:
        st = self.stats
        if outcome.deferred:
            st.batches_deferred_by_reason[outcome.deferred] += 1
            st.samples_deferred_by_reason[outcome.deferred] += n
            return
        st.samples_stored += outcome.stored
        st.samples_rejected_by_reason.update(outcome.rejected)
        if outcome.rejected_batch:
            st.batches_rejected_by_reason[outcome.rejected_batch] += 1
        else:
            st.batches_stored += 1
        st.batches_retried += outcome.retried

    def _rejected(self, batch: pb.Batch, n: int, reason: str, message: str) -> _Outcome:
        ack = pb.Ack(batch_id=batch.batch_id, code=CODE_INVALID_ARGUMENT, message=message)
        return _Outcome(ack, rejected=Counter({reason: n}) if n else Counter(), rejected_batch=reason)

    async def _process(self, batch: pb.Batch, n: int, hold: bool = True) -> _Outcome:
        try:
            scan = validate_batch(batch, self.limits, time.time_ns())
            placement = self.topology.locate(batch.node)
            if placement is None:
                return self._unknown_node(batch, n)
            validate_host_samples(batch, self.limits, time.time_ns())
            side_lines = self.ledgers.lines(batch, placement.rack) + host_lines(batch, placement)
            if not batch.gpu_samples:
                if side_lines:
                    await self.store.write_lines(side_lines)
                return _Outcome(pb.Ack(batch_id=batch.batch_id, code=CODE_OK, stored_samples=0))
            lock = self._node_locks.get(batch.node)
            if lock is None:
                lock = self._node_locks[batch.node] = asyncio.Lock()
            async with lock:
                outcome = await self._store_samples(batch, n, placement, side_lines, scan, hold)
            if outcome.after is not None:  # the rack windows: the node's next batch need not wait
                await outcome.after()
            return outcome
        except BatchRejected as exc:
            if self._log_budget.allow(batch.node):
                log.warning("rejected batch %d from node %s: %s", batch.batch_id, shown(batch.node), exc)
            return self._rejected(batch, n, exc.reason, str(exc))
        except StoreRejected as exc:
            log.error("InfluxDB rejected batch %d from node %r: %s", batch.batch_id, batch.node, exc)
            return self._rejected(batch, n, "influxdb_bad_points", str(exc))
        except StoreUnavailable as exc:
            log.warning("not stored (agent will resend) batch %d from %r: %s",
                        batch.batch_id, batch.node, exc)
            retry = exc.retry_after_s if exc.retry_after_s is not None else self.store.retry_after_s()
            return _unavailable(batch, n, "store_unavailable", f"not stored, resend later: {exc}", retry)
        except QueryError as exc:  # rack windows or feed-derived PUE not read back; a resend redoes them
            log.warning("batch %d from %r: InfluxDB read failed (rack windows or feed PUE): %s",
                        batch.batch_id, batch.node, exc)
            return _unavailable(batch, n, "store_unavailable", f"not stored, resend later: {exc}",
                                self.store.retry_after_s())
        except IntensityUnavailable as exc:
            log.warning("batch %d from %r: %s", batch.batch_id, batch.node, exc)
            return _unavailable(batch, n, "intensity_unavailable", f"not stored, resend later: {exc}",
                                self.store.retry_after_s())

    async def _store_samples(self, batch: pb.Batch, n: int, placement: Placement,
                             side_lines: list[str], scan: BatchScan, hold: bool = True) -> _Outcome:
        """Check the node's job budget and stored GPU time, then account and write (under the node lock)."""
        budget = self.bounds.jobs
        job_ids = scan.job_ids
        new_jobs = budget.new_jobs(batch.node, job_ids)
        wait_s = budget.check(batch.node, new_jobs)
        if math.isinf(wait_s):
            raise BatchRejected(
                f"too_many_new_jobs: the batch names {len(new_jobs)} job ids new to this node, above the "
                f"{budget.per_hour} a node may introduce per hour (server.max_new_jobs_per_node_per_hour)",
                "too_many_new_jobs")
        if wait_s > 0:
            log.warning("node %s: too_many_new_jobs: %d new job ids this hour, %d more refused for now",
                        shown(batch.node), budget.used(batch.node), len(new_jobs))
            return _unavailable(
                batch, n, "too_many_new_jobs",
                f"too_many_new_jobs: this node introduced {budget.used(batch.node)} new job ids in the last "
                f"hour (server.max_new_jobs_per_node_per_hour = {budget.per_hour}); resend later", wait_s)
        lo, hi = scan.lo_ns, scan.hi_ns
        samples = scan.samples
        # per GPU, its earliest start and latest end: all that held state and the interval view need
        # of the samples (they read ``gpu_index``, ``start_ns`` and ``end_ns`` of each)
        spans = gpu_spans(scan.rows)
        held: NodeHeld | None = None  # the node's held state (collector/node_state.py)
        hold = hold and self.rack_windows
        if self.bounds.check_intervals or hold:
            if not self.store.serving:  # as a write would: no request while InfluxDB is down
                raise StoreUnavailable(f"InfluxDB unavailable: {self.store.health_reason}",
                                       self.store.retry_after_s(), "unhealthy")
            lookback = self.bounds.max_interval_ns
            conflict = None
            try:
                if hold:
                    held = await self.rollup.held.acquire(batch.node, lo, lookback)
                if self.bounds.check_intervals:
                    stored = held.interval_view(spans, lo, lookback) if held is not None else None
                    if stored is None:
                        self.rollup.held.interval_checks_read += 1
                        stored = await stored_intervals(self.store, batch.node, lo, hi, lookback)
                    else:
                        self.rollup.held.interval_checks_held += 1
                    scan.digests = sample_digests(samples)  # the gpu points store them too
                    conflict = first_conflict(samples, scan.digests, stored, scan.rows)
            except QueryError as exc:
                if "unreachable" in str(exc):  # down, as a failed write would find: health follows
                    await self.store.note_unreachable(str(exc))
                raise
            if conflict:
                raise BatchRejected(f"interval_conflict: {conflict}", "interval_conflict")
        intensity = await placement.intensity.series(lo, hi)
        pue = await placement.pue_series(lo, hi)
        prepared = prepare_batch(batch, placement, intensity, self.rollup.resolution_ns, pue,
                                 self.store.config.gpu_point_fields, scan)
        # the ledger and host lines ride along after the samples' lines, in the same requests
        n_lines = len(prepared.lines)
        if held is not None:  # still set at the node's next batch if this write fails
            held.writing = True
        # held: one write, the batch's lines with the node, job_window (and rack) points they make,
        # or the lines then the node's windows, under the rollup's node lock (RackRollup.write_batch)
        node_done = held is not None and self.rack_windows
        rack_done = False
        if held is not None and self.rack_windows:
            one = await self.rollup.write_batch(
                batch.node, placement.rack, placement.zone, prepared.windows, held, spans,
                prepared.job_points, prepared.lines + side_lines)
            result, rack_done = one.result, one.rack_done
        else:  # with the writer marks of its windows first (collector/writer_marks.py)
            result = await self.rollup.write_marked({batch.node: prepared.windows},
                                                    prepared.lines + side_lines)
        retried = result.retries > 0
        for index, (status, reason) in list(result.rejected.items()):
            if index >= n_lines:  # a ledger or host line: logged, never costs the samples
                del result.rejected[index]
                log.error("batch %d from %r: InfluxDB refused a ledger/host line (HTTP %d): %s",
                          batch.batch_id, batch.node, status, reason)
        if self.on_estimated is not None and prepared.estimated_co2e_g > 0:
            self.on_estimated(placement.zone, lo, hi)
        if self.on_accounted is not None:  # the live view on /metrics (collector/live_metrics.py)
            self.on_accounted(batch, placement, intensity, pue, prepared.first_line, result.rejected, scan)
        after = None
        if self.rack_windows:
            if not node_done:
                await self.rollup.recompute_node(batch.node, placement.rack, placement.zone, prepared.windows,
                                                 None if result.rejected else held, spans,
                                                 prepared.job_points)
            # a batch may end part way through an interval's GPUs: the node has reported
            # completely only up to the earliest of its GPUs' latest ends
            reported_ns = min([span.end_ns for span in spans])

            async def after() -> None:
                if not rack_done:
                    await self.rollup.recompute_rack(placement.rack, placement.zone, prepared.windows)
                if self.on_stored is not None:
                    self.on_stored(batch.node, placement.rack, min(prepared.windows), reported_ns)
        budget.admit(batch.node, job_ids, new_jobs)
        if not result.rejected:
            ack = pb.Ack(batch_id=batch.batch_id, code=CODE_OK, stored_samples=n)
            return _Outcome(ack, stored=n, retried=retried, after=after)
        outcome = self._partly_rejected(batch, n, prepared.first_line, result.rejected, retried)
        outcome.after = after
        return outcome

    def _unknown_node(self, batch: pb.Batch, n: int) -> _Outcome:
        """A node in no rack is a config mistake, not bad data: UNAVAILABLE, so the agent keeps
        its samples until the node is added to [[racks]]; logged loudly (once a minute per node)."""
        self.unknown_node_batches += 1
        now = time.monotonic()
        if now - self._unknown_logged.get(batch.node, -1e9) >= 60.0:
            if len(self._unknown_logged) >= 1000:
                self._unknown_logged.clear()
            self._unknown_logged[batch.node] = now
            log.error("unknown_node: node %s is not in any rack of the collector's config (and "
                      "server.auto_register is off): its samples are NOT stored; the agent keeps them "
                      "and resends them every %g s until the node is added to [[racks]]",
                      shown(batch.node), self.unknown_node_retry_after_s)
        message = (f"unknown_node: node {shown(batch.node)} is not in any rack of the collector's config "
                   "and auto-registration is off; not stored, keep the samples and resend later")
        return _unavailable(batch, n, "unknown_node", message, self.unknown_node_retry_after_s)

    def _partly_rejected(
        self, batch: pb.Batch, n: int, first_line: list[int], rejected: dict[int, tuple[int, str]],
        retried: bool,
    ) -> _Outcome:
        """InfluxDB refused some lines: the samples they belong to are rejected, the rest stored."""
        bad: dict[int, tuple[int, str]] = {}
        for line, why in sorted(rejected.items()):
            bad.setdefault(bisect.bisect_right(first_line, line) - 1, why)
        reasons: Counter[str] = Counter(
            "influxdb_too_large" if status == 413 else "influxdb_bad_points" for status, _ in bad.values()
        )
        stored = n - len(bad)
        examples = "; ".join(
            f"sample {i} (gpu {batch.gpu_samples[i].gpu_index}, start_ns {batch.gpu_samples[i].start_ns}): "
            f"{why}" for i, (_, why) in list(bad.items())[:3]
        )
        message = (f"InfluxDB refused {len(bad)} of {n} samples (the other {stored} are stored; "
                   f"do not resend): {examples}")
        log.error("batch %d from %r: %s", batch.batch_id, batch.node, message)
        ack = pb.Ack(batch_id=batch.batch_id, code=CODE_INVALID_ARGUMENT, message=message[:2000],
                     stored_samples=stored)
        return _Outcome(ack, stored=stored, rejected=reasons, rejected_batch=reasons.most_common(1)[0][0],
                        retried=retried)


class LogBudget:
    """At most ``per_window`` log lines per key and window; then one line saying how many were skipped."""

    def __init__(self, per_window: int, window_s: float) -> None:
        self.per_window = per_window
        self.window_s = window_s
        self._state: dict[str, tuple[float, int]] = {}

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        start, count = self._state.get(key, (now, 0))
        if now - start >= self.window_s:
            if count > self.per_window:
                log.warning("node %s: %d more rejections in the last %g s were not logged (see "
                            "gridwatt_collector_samples_rejected_total)", shown(key), count - self.per_window,
                            self.window_s)
            start, count = now, 0
        if len(self._state) > 10_000:
            self._state.clear()
        self._state[key] = (start, count + 1)
        return count < self.per_window


def _parse_batch(raw: bytes) -> pb.Batch | str:
    """The batch, or the reason it does not parse as a gridwatt.v1.Batch."""
    try:
        return pb.Batch.FromString(raw)
    except DecodeError as exc:
        return f"malformed batch: {len(raw)} bytes do not parse as gridwatt.v1.Batch ({exc})"


class IngestService:
    """The gridwatt.v1.Ingest gRPC service.

    Requests arrive as raw bytes and are parsed here, so a malformed message is
    answered with INVALID_ARGUMENT (gRPC's own deserializer would say INTERNAL).
    """

    def __init__(self, ingestor: Ingestor, auth: NodeAuth | None = None,
                 max_streams_per_node: int = 1_000_000) -> None:
        self.ingestor = ingestor
        self.auth = auth or NodeAuth()
        self.connected_streams = 0
        self.refused_calls = 0
        #: Streams open per node (the node of a stream's first batch; every later one must match).
        self.streams = NodeSlots(max_streams_per_node)

    async def _refuse(self, context: grpc.aio.ServicerContext, exc: AuthError) -> None:
        self.refused_calls += 1
        log.warning("refused %s from %s: %s", exc.code.name, context.peer(), exc)
        await context.abort(exc.code, str(exc))
        raise AssertionError("unreachable")

    async def _identify(self, context: grpc.aio.ServicerContext) -> Identity:
        if not self.auth.enabled:
            return Identity()
        try:
            return self.auth.identify(context.invocation_metadata(), context.auth_context())
        except AuthError as exc:
            await self._refuse(context, exc)
            raise

    async def _authorize(self, context: grpc.aio.ServicerContext, identity: Identity, node: str) -> None:
        try:
            self.auth.authorize(identity, node)
        except AuthError as exc:
            await self._refuse(context, exc)

    async def Stream(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Ack]:
        identity = await self._identify(context)
        self.connected_streams += 1
        stream_node: str | None = None
        try:
            async for raw in request_iterator:
                batch = _parse_batch(raw)
                if isinstance(batch, str):
                    self.ingestor.count_malformed()
                    log.warning("%s (peer %s)", batch, context.peer())
                    yield pb.Ack(batch_id=0, code=CODE_INVALID_ARGUMENT, message=batch)
                    continue
                await self._authorize(context, identity, batch.node)
                if stream_node is None and batch.node:
                    if not self.streams.try_take(batch.node):
                        self.refused_calls += 1
                        log.warning("too_many_streams: node %s already has %d streams open (peer %s)",
                                    shown(batch.node), self.streams.limit, context.peer())
                        await context.abort(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"too_many_streams: this node has {self.streams.limit} streams open already "
                            "(server.max_streams_per_node); use one stream")
                    stream_node = batch.node
                    # it may have streamed to another replica meanwhile: read its state again
                    self.ingestor.rollup.held.drop(batch.node)
                    self.ingestor.rollup.racks.stream_opened(batch.node)
                elif stream_node is not None and batch.node != stream_node:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"stream_node_changed: this stream carries node {shown(stream_node)}, not "
                        f"{shown(batch.node)}; one stream per node")
                yield await self.ingestor.handle(batch)
        finally:
            self.connected_streams -= 1
            if stream_node is not None:
                self.streams.release(stream_node)
                self.ingestor.rollup.racks.stream_closed(stream_node)

    async def Write(self, request: bytes, context: grpc.aio.ServicerContext) -> pb.Ack:
        identity = await self._identify(context)
        batch = _parse_batch(request)
        if isinstance(batch, str):
            self.ingestor.count_malformed()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, batch)
            raise AssertionError("unreachable")
        await self._authorize(context, identity, batch.node)
        ack = await self.ingestor.handle(batch, hold=False)
        if ack.code == CODE_INVALID_ARGUMENT:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, ack.message)
        if ack.code == CODE_UNAVAILABLE:
            await context.abort(grpc.StatusCode.UNAVAILABLE, ack.message,
                                trailing_metadata=((RETRY_AFTER_MD, str(ack.retry_after_ms)),))
        return ack

    async def Check(self, request: bytes, context: grpc.aio.ServicerContext) -> pb.CheckResponse:
        """Credentials valid for the node, and the node known; stores nothing."""
        identity = await self._identify(context)
        try:
            req = pb.CheckRequest.FromString(request)
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed CheckRequest")
            raise AssertionError("unreachable") from None
        await self._authorize(context, identity, req.node)
        placement = self.ingestor.topology.locate(req.node)
        if placement is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"node {req.node!r} is not in any rack of the collector's config "
                "and auto-registration is off",
            )
            raise AssertionError("unreachable")
        return pb.CheckResponse(
            node=req.node,
            rack=placement.rack,
            zone=placement.zone,
            authenticated=identity.token_node is not None or identity.cert_cn is not None,
            auth_required=self.auth.enabled,
            collector_version=__version__,
        )

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler to add to a grpc.aio server."""
        return grpc.method_handlers_generic_handler(
            "gridwatt.v1.Ingest",
            {
                "Stream": grpc.stream_stream_rpc_method_handler(
                    self.Stream, request_deserializer=None, response_serializer=pb.Ack.SerializeToString
                ),
                "Write": grpc.unary_unary_rpc_method_handler(
                    self.Write, request_deserializer=None, response_serializer=pb.Ack.SerializeToString
                ),
                "Check": grpc.unary_unary_rpc_method_handler(
                    self.Check, request_deserializer=None,
                    response_serializer=pb.CheckResponse.SerializeToString,
                ),
            },
        )
