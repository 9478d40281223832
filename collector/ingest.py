"""gRPC ingest: validate → account → store → recompute rack windows → acknowledge.

An Ack is sent only after the batch is stored. A bad batch is answered with
INVALID_ARGUMENT naming the problem, and nothing of it is stored; the stream
and every other agent carry on. When InfluxDB cannot store, the answer is
UNAVAILABLE and the agent keeps the batch and resends it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from gridwatt.collector.ledger import LedgerBook
from gridwatt.collector.points import prepare_batch
from gridwatt.collector.rollup import RackRollup
from gridwatt.collector.store import InfluxStore, StoreRejected, StoreUnavailable
from gridwatt.collector.topology import Topology
from gridwatt.collector.validation import BatchRejected, Limits, validate_batch
from gridwatt.v1 import telemetry_pb2 as pb

log = logging.getLogger("gridwatt.collector.ingest")

CODE_OK = grpc.StatusCode.OK.value[0]
CODE_INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
CODE_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


@dataclass
class IngestStats:
    """Counts since start; received = stored + rejected + unavailable (samples)."""

    batches_received: int = 0
    samples_received: int = 0
    samples_stored: int = 0
    samples_rejected: int = 0
    samples_unavailable: int = 0


class Ingestor:
    """Turns one batch into stored points and an Ack (transport-independent)."""

    def __init__(self, topology: Topology, store: InfluxStore, rollup: RackRollup, limits: Limits) -> None:
        self.topology = topology
        self.store = store
        self.rollup = rollup
        self.limits = limits
        self.stats = IngestStats()
        self.ledgers = LedgerBook()

    async def handle(self, batch: pb.Batch) -> pb.Ack:
        n = len(batch.gpu_samples)
        self.stats.batches_received += 1
        self.stats.samples_received += n
        try:
            validate_batch(batch, self.limits, time.time_ns())
            placement = self.topology.locate(batch.node)
            if placement is None:
                raise BatchRejected(
                    f"field node: value {batch.node!r} is not in any rack of the collector's config "
                    "and auto-registration is off"
                )
            ledger_lines = self.ledgers.lines(batch, placement.rack)
            if not batch.gpu_samples:
                await self.store.write_lines(ledger_lines)
                self.stats.samples_stored += n
                return pb.Ack(batch_id=batch.batch_id, code=CODE_OK, stored_samples=0)
            lo = min(s.start_ns for s in batch.gpu_samples)
            hi = max(s.end_ns for s in batch.gpu_samples)
            intensity = await placement.intensity.series(lo, hi)
            prepared = prepare_batch(batch, placement, intensity, self.rollup.resolution_ns)
            await self.store.write_lines(prepared.lines + ledger_lines)
            await self.rollup.recompute(placement.rack, placement.zone, prepared.windows)
        except BatchRejected as exc:
            self.stats.samples_rejected += n
            log.warning("rejected batch %d from node %r: %s", batch.batch_id, batch.node, exc)
            return pb.Ack(batch_id=batch.batch_id, code=CODE_INVALID_ARGUMENT, message=str(exc))
        except StoreRejected as exc:
            self.stats.samples_rejected += n
            log.error("InfluxDB rejected batch %d from node %r: %s", batch.batch_id, batch.node, exc)
            return pb.Ack(batch_id=batch.batch_id, code=CODE_INVALID_ARGUMENT, message=str(exc))
        except StoreUnavailable as exc:
            self.stats.samples_unavailable += n
            log.warning("not stored (agent will resend) batch %d from %r: %s",
                        batch.batch_id, batch.node, exc)
            return pb.Ack(batch_id=batch.batch_id, code=CODE_UNAVAILABLE, message=str(exc))
        self.stats.samples_stored += n
        return pb.Ack(batch_id=batch.batch_id, code=CODE_OK, stored_samples=n)


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

    def __init__(self, ingestor: Ingestor) -> None:
        self.ingestor = ingestor
        self.connected_streams = 0

    async def Stream(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Ack]:
        self.connected_streams += 1
        try:
            async for raw in request_iterator:
                batch = _parse_batch(raw)
                if isinstance(batch, str):
                    self.ingestor.stats.batches_received += 1
                    log.warning("%s (peer %s)", batch, context.peer())
                    yield pb.Ack(batch_id=0, code=CODE_INVALID_ARGUMENT, message=batch)
                    continue
                yield await self.ingestor.handle(batch)
        finally:
            self.connected_streams -= 1

    async def Write(self, request: bytes, context: grpc.aio.ServicerContext) -> pb.Ack:
        batch = _parse_batch(request)
        if isinstance(batch, str):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, batch)
            raise AssertionError("unreachable")
        ack = await self.ingestor.handle(batch)
        if ack.code == CODE_INVALID_ARGUMENT:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, ack.message)
        if ack.code == CODE_UNAVAILABLE:
            await context.abort(grpc.StatusCode.UNAVAILABLE, ack.message)
        return ack

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
            },
        )
