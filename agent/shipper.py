"""Ships spooled samples to the collector over one gRPC stream, resending until acknowledged.

Batches go out in spool order, up to ``max_in_flight`` unacknowledged at once.
The collector answers each batch with one Ack after storing it: OK deletes the
batch's samples from the spool, INVALID_ARGUMENT moves them aside (bad input is
never resent), anything else (or a broken stream) reconnects with exponential
backoff and full jitter and resends everything still pending. Resending is safe:
the collector's writes are idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from gridwatt import __version__
from gridwatt.agent.config import CollectorConnection
from gridwatt.agent.spool import Spool
from gridwatt.configfile import read_secret
from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc

log = logging.getLogger("gridwatt.agent.shipper")

CODE_OK = grpc.StatusCode.OK.value[0]
CODE_INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def channel_options(conn: CollectorConnection) -> list[tuple[str, int]]:
    """Keepalive settings that match the collector's (see collector/server.py)."""
    return [
        ("grpc.keepalive_time_ms", int(conn.keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(conn.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]


def make_channel(conn: CollectorConnection) -> grpc.aio.Channel:
    """An insecure or (m)TLS channel to the collector, per the config."""
    options = channel_options(conn)
    if not conn.tls:
        return grpc.aio.insecure_channel(conn.address, options=options)
    root = conn.ca_file.read_bytes() if conn.ca_file else None
    key = conn.key_file.read_bytes() if conn.key_file else None
    cert = conn.cert_file.read_bytes() if conn.cert_file else None
    creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)
    return grpc.aio.secure_channel(conn.address, creds, options=options)


@dataclass
class ShipperStats:
    batches_sent: int = 0
    batches_acked: int = 0
    batches_rejected: int = 0
    reconnects: int = 0
    last_error: str = ""
    rejections: list[str] = field(default_factory=list)


class Shipper:
    """See the module docstring."""

    def __init__(self, node: str, spool: Spool, conn: CollectorConnection) -> None:
        self.node = node
        self.spool = spool
        self.conn = conn
        self.stats = ShipperStats()
        self.new_data = asyncio.Event()
        self.acked = asyncio.Event()
        self._next_batch_id = 1
        token = read_secret(conn.token, conn.token_file, "collector token")
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def _make_batch(self, rows: Sequence[tuple[int, bytes]]) -> pb.Batch:
        batch = pb.Batch(batch_id=self._next_batch_id, node=self.node, agent_version=__version__)
        self._next_batch_id += 1
        add = batch.gpu_samples.add
        for _, payload in rows:
            add().MergeFromString(payload)
        return batch

    async def run(self, stop: asyncio.Event) -> None:
        """Ship until ``stop`` is set; reconnects forever (no time-based give-up)."""
        attempt = 0
        while not stop.is_set():
            try:
                progressed = await self._session(stop)
                if progressed:
                    attempt = 0
            except grpc.aio.AioRpcError as exc:
                self.stats.last_error = f"{exc.code().name}: {exc.details()}"
                if attempt == 0:
                    log.warning("collector %s: %s; retrying", self.conn.address, self.stats.last_error)
            except _Reconnect as exc:
                self.stats.last_error = str(exc)
                log.warning("collector %s: %s; reconnecting", self.conn.address, exc)
            if stop.is_set():
                break
            self.stats.reconnects += 1
            delay = random.uniform(0, min(self.conn.reconnect_max_s, 0.2 * 2**attempt))
            attempt = min(attempt + 1, 16)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    async def _session(self, stop: asyncio.Event) -> bool:
        in_flight: dict[int, list[int]] = {}
        progressed = False
        async with make_channel(self.conn) as channel:
            stub = pb_grpc.IngestStub(channel)
            call = stub.Stream(metadata=self._metadata)
            last_seq = 0
            slot_free = asyncio.Event()
            slot_free.set()

            async def read_acks() -> None:
                nonlocal progressed
                async for ack in call:
                    seqs = in_flight.pop(ack.batch_id, None)
                    if seqs is None:
                        continue
                    if ack.code == CODE_OK:
                        self.spool.acknowledge(seqs)
                        self.stats.batches_acked += 1
                        progressed = True
                    elif ack.code == CODE_INVALID_ARGUMENT:
                        self.spool.reject(seqs, ack.message)
                        self.stats.batches_rejected += 1
                        self.stats.rejections.append(ack.message)
                        log.error("collector rejected %d samples: %s", len(seqs), ack.message)
                        progressed = True
                    else:
                        raise _Reconnect(f"batch not stored ({ack.code}): {ack.message}")
                    slot_free.set()
                    self.acked.set()
                raise _Reconnect("collector closed the stream")

            reader = asyncio.create_task(read_acks())
            stopper = asyncio.create_task(stop.wait())
            try:
                while not stop.is_set():
                    if reader.done():
                        reader.result()
                    if len(in_flight) >= self.conn.max_in_flight:
                        slot_free.clear()
                        await self._wait_any(slot_free.wait(), reader, stopper)
                        continue
                    rows = self.spool.read_after(last_seq, self.conn.batch_max_samples)
                    if not rows:
                        self.new_data.clear()
                        await self._wait_any(self.new_data.wait(), reader, stopper, timeout=1.0)
                        continue
                    batch = self._make_batch(rows)
                    in_flight[batch.batch_id] = [s for s, _ in rows]
                    last_seq = rows[-1][0]
                    await call.write(batch)
                    self.stats.batches_sent += 1
                return progressed
            finally:
                stopper.cancel()
                reader.cancel()
                call.cancel()

    @staticmethod
    async def _wait_any(coro: object, *tasks: asyncio.Task[object], timeout: float | None = None) -> None:
        waiter = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        try:
            await asyncio.wait([waiter, *tasks], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()


class _Reconnect(Exception):
    pass
