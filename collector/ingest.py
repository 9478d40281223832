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

import bisect
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError

from gridwatt import __version__
from gridwatt.collector.auth import AuthError, Identity, NodeAuth
from gridwatt.collector.ingest_stats import IngestStats
from gridwatt.collector.intensity.base import IntensityUnavailable
from gridwatt.collector.ledger import LedgerBook
from gridwatt.collector.points import host_lines, prepare_batch
from gridwatt.collector.rollup import RackRollup
from gridwatt.collector.store import InfluxStore, QueryError, StoreRejected, StoreUnavailable
from gridwatt.collector.topology import Topology
from gridwatt.collector.validation import BatchRejected, Limits, validate_batch, validate_host_samples
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
    ) -> None:
        self.on_stored = on_stored
        #: called with (zone, start_ns, end_ns) after a batch accounted with estimated intensity is stored
        self.on_estimated = on_estimated
        #: Called with (batch, placement, intensity, pue, first_line, refused lines) once stored.
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

    def count_malformed(self) -> None:
        """A message that is not a Batch: one received and rejected batch, no samples."""
        self.stats.batches_received += 1
        self.stats.batches_rejected_by_reason["malformed"] += 1

    async def handle(self, batch: pb.Batch) -> pb.Ack:
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
        st.batches_in_flight += 1
        st.samples_in_flight += n
        done: _Outcome | None = None
        try:
            done = await self._process(batch, n)
        except Exception as exc:  # unforeseen: not stored as far as the agent knows; it resends
            log.exception("batch %d from %r failed", batch.batch_id, batch.node)
            done = _unavailable(batch, n, "error", f"collector error, not stored: {exc}",
                                self.store.retry_after_s())
        finally:
            # in the same event-loop step as the ledger entries below, so the ledger always adds up
            st.batches_in_flight -= 1
            st.samples_in_flight -= n
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

    async def _process(self, batch: pb.Batch, n: int) -> _Outcome:
        retried = False
        try:
            validate_batch(batch, self.limits, time.time_ns())
            placement = self.topology.locate(batch.node)
            if placement is None:
                raise BatchRejected(
                    f"field node: value {batch.node!r} is not in any rack of the collector's config "
                    "and auto-registration is off"
                )
            validate_host_samples(batch, self.limits, time.time_ns())
            side_lines = self.ledgers.lines(batch, placement.rack) + host_lines(batch, placement)
            if not batch.gpu_samples:
                if side_lines:
                    await self.store.write_lines(side_lines)
                return _Outcome(pb.Ack(batch_id=batch.batch_id, code=CODE_OK, stored_samples=0))
            lo = min(s.start_ns for s in batch.gpu_samples)
            hi = max(s.end_ns for s in batch.gpu_samples)
            intensity = await placement.intensity.series(lo, hi)
            pue = await placement.pue_series(lo, hi)
            prepared = prepare_batch(batch, placement, intensity, self.rollup.resolution_ns, pue)
            # the ledger and host lines ride along after the samples' lines, in the same requests
            n_lines = len(prepared.lines)
            result = await self.store.write_lines(prepared.lines + side_lines)
            retried = result.retries > 0
            for index, (status, reason) in list(result.rejected.items()):
                if index >= n_lines:  # a ledger or host line: logged, never costs the samples
                    del result.rejected[index]
                    log.error("batch %d from %r: InfluxDB refused a ledger/host line (HTTP %d): %s",
                              batch.batch_id, batch.node, status, reason)
            if self.on_estimated is not None and prepared.estimated_co2e_g > 0:
                self.on_estimated(placement.zone, lo, hi)
            if self.on_accounted is not None:  # the live view on /metrics (collector/live_metrics.py)
                self.on_accounted(batch, placement, intensity, pue, prepared.first_line, result.rejected)
            if self.rack_windows:
                await self.rollup.recompute(batch.node, placement.rack, placement.zone, prepared.windows)
                if self.on_stored is not None:
                    # a batch may end part way through an interval's GPUs: the node has reported
                    # completely only up to the earliest of its GPUs' latest ends
                    latest: dict[int, int] = {}
                    for s in batch.gpu_samples:
                        if s.end_ns > latest.get(s.gpu_index, 0):
                            latest[s.gpu_index] = s.end_ns
                    self.on_stored(batch.node, placement.rack, min(prepared.windows), min(latest.values()))
        except BatchRejected as exc:
            log.warning("rejected batch %d from node %r: %s", batch.batch_id, batch.node, exc)
            return self._rejected(batch, n, "validation", str(exc))
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
        if not result.rejected:
            ack = pb.Ack(batch_id=batch.batch_id, code=CODE_OK, stored_samples=n)
            return _Outcome(ack, stored=n, retried=retried)
        return self._partly_rejected(batch, n, prepared.first_line, result.rejected, retried)

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

    def __init__(self, ingestor: Ingestor, auth: NodeAuth | None = None) -> None:
        self.ingestor = ingestor
        self.auth = auth or NodeAuth()
        self.connected_streams = 0
        self.refused_calls = 0

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
        try:
            async for raw in request_iterator:
                batch = _parse_batch(raw)
                if isinstance(batch, str):
                    self.ingestor.count_malformed()
                    log.warning("%s (peer %s)", batch, context.peer())
                    yield pb.Ack(batch_id=0, code=CODE_INVALID_ARGUMENT, message=batch)
                    continue
                await self._authorize(context, identity, batch.node)
                yield await self.ingestor.handle(batch)
        finally:
            self.connected_streams -= 1

    async def Write(self, request: bytes, context: grpc.aio.ServicerContext) -> pb.Ack:
        identity = await self._identify(context)
        batch = _parse_batch(request)
        if isinstance(batch, str):
            self.ingestor.count_malformed()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, batch)
            raise AssertionError("unreachable")
        await self._authorize(context, identity, batch.node)
        ack = await self.ingestor.handle(batch)
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
