"""Ships spooled samples to the collector over one gRPC stream, resending until acknowledged.

Batches go out in spool order, up to ``max_in_flight`` unacknowledged at once.
The collector answers each batch with one Ack after storing it: OK deletes the
batch's samples from the spool, INVALID_ARGUMENT moves them aside (bad input is
never resent), anything else (or a broken stream) reconnects with exponential
backoff and full jitter and resends everything still pending, for as long as it
takes (there is no time-based give-up; only a full spool evicts). Resending is
safe: the collector's writes are idempotent.

Every batch carries the spool's ledger (a SpoolLedger), so the collector learns
what was evicted from a full spool as soon as it is reachable again. A batch with
only the ledger is sent when nothing else was sent for ``ledger_report_s``, and
once more on a graceful stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from gridwatt import __version__
from gridwatt.agent.config import CollectorConnection
from gridwatt.agent.host_meter import HOST_PAYLOAD_PREFIX
from gridwatt.agent.spool import Ledger, Spool
from gridwatt.configfile import read_secret
from gridwatt.v1 import telemetry_pb2 as pb
from gridwatt.v1 import telemetry_pb2_grpc as pb_grpc

log = logging.getLogger("gridwatt.agent.shipper")

CODE_OK = grpc.StatusCode.OK.value[0]
CODE_INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def channel_options(conn: CollectorConnection) -> list[tuple[str, int]]:
    """Keepalive settings that match the collector's (see collector/server.py).

    A hung collector (alive socket, no answers) is noticed keepalive_s + keepalive_timeout_s after
    its last sign of life. gRPC core (1.6x-1.8x) does not enforce keepalive_timeout itself: an
    unanswered ping is only timed out by ``grpc.http2.ping_timeout_ms`` (default 60 s), so that is
    set to the same value.
    """
    timeout_ms = int(conn.keepalive_timeout_s * 1000)
    return [
        ("grpc.keepalive_time_ms", int(conn.keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", timeout_ms),
        ("grpc.http2.ping_timeout_ms", timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]


def make_channel(conn: CollectorConnection, address: str | None = None) -> grpc.aio.Channel:
    """An insecure or (m)TLS channel to the collector at ``address`` (default: ``conn.address``)."""
    options = channel_options(conn)
    address = address or conn.address
    if not conn.tls:
        return grpc.aio.insecure_channel(address, options=options)
    root = conn.ca_file.read_bytes() if conn.ca_file else None
    key = conn.key_file.read_bytes() if conn.key_file else None
    cert = conn.cert_file.read_bytes() if conn.cert_file else None
    creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)
    return grpc.aio.secure_channel(address, creds, options=options)


@dataclass
class ShipperStats:
    batches_sent: int = 0
    batches_acked: int = 0
    batches_rejected: int = 0
    #: Sessions that ended other than by a stop (errors, UNAVAILABLE acks, GOAWAY, lost connection).
    reconnects: int = 0
    #: Batches sent that carried only the ledger (on connect, when idle, on stop).
    ledger_reports: int = 0
    last_error: str = ""
    rejections: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One log line."""
        return (f"batches_sent={self.batches_sent} batches_acked={self.batches_acked} "
                f"batches_rejected={self.batches_rejected} reconnects={self.reconnects} "
                f"ledger_reports={self.ledger_reports}")


def lingering_s(unsent: int, batch_max_samples: int, linger_s: float, waited_s: float,
                flushing: bool) -> float:
    """Seconds to wait for more samples before sending ``unsent`` ones (0: send now).

    Send when the batch is full, when the oldest unsent sample has waited ``linger_s``, or when
    the agent is flushing (stopping or draining).
    """
    if flushing or unsent >= batch_max_samples:
        return 0.0
    return max(linger_s - waited_s, 0.0)


def first_target(node: str, count: int) -> int:
    """The collector a node tries first: a stable hash of its name, so nodes spread over the list."""
    return zlib.crc32(node.encode()) % count


def retrieve_quietly(task: asyncio.Future[Any]) -> None:
    """Done callback: take a finished task's exception, so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


def ledger_proto(ledger: Ledger, at_ns: int) -> pb.SpoolLedger:
    """The ledger as sent to the collector."""
    return pb.SpoolLedger(
        sampled=ledger.sampled, acknowledged=ledger.acknowledged, rejected=ledger.rejected,
        evicted=ledger.evicted, evicted_energy_j=ledger.evicted_energy_j, lost=ledger.lost,
        pending=ledger.pending, at_ns=at_ns, quarantines=ledger.quarantines,
    )


class NewData(asyncio.Event):
    """``Shipper.new_data``: set by whoever appends to the spool, to wake the shipper.

    While the shipper lingers on a batch that cannot be full yet, ``set()`` has nothing to tell it
    (the linger's own timer wakes it), so it is let through only when ``wanted()`` says the wait
    should end: at 1 Hz that spares the shipper one wake-up per interval. ``ring()`` always wakes.
    """

    def __init__(self) -> None:
        super().__init__()
        #: None: every set() wakes; else a test that is False while a wake-up would change nothing.
        self.wanted: Callable[[], bool] | None = None

    def set(self) -> None:
        if self.wanted is None or self.wanted():
            super().set()

    def ring(self, _: object = None) -> None:
        """Wake the shipper whatever it waits for (timers, the end of a stream, a stop)."""
        super().set()


class Shipper:
    """See the module docstring."""

    def __init__(
        self, node: str, spool: Spool, conn: CollectorConnection, ledger_report_s: float = 60.0,
        final_ledger_timeout_s: float = 1.5, on_ack: Callable[[float, int, int], None] | None = None,
    ) -> None:
        self.node = node
        self.spool = spool
        self.conn = conn
        self.ledger_report_s = ledger_report_s
        self.final_ledger_timeout_s = final_ledger_timeout_s
        self.stats = ShipperStats()
        #: Called for every stored batch (benchmarks) with: seconds from send to ack, samples, and
        #: nanoseconds from the end of its oldest GPU sample's interval to the ack (0 if none):
        #: the delay the data saw, linger included.
        self.on_ack = on_ack
        self._sent_at: dict[int, tuple[float, int]] = {}
        self.new_data = NewData()
        #: Set when the agent stops or drains: spooled samples go out without lingering.
        self.flush = asyncio.Event()
        self.acked = asyncio.Event()
        self._progressed = False
        self._ledger_only = True  # the collector accepts batches that carry only a ledger
        self._next_batch_id = 1
        self.targets = conn.targets()
        #: Index in ``targets`` of the collector in use; nodes start spread over the list.
        self.target = first_target(node, len(self.targets))
        self._announced = ""
        token = read_secret(conn.token, conn.token_file, "collector token", conn.token_file_mode,
                            "collector.token_file_mode")
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def _make_batch(self, rows: Sequence[tuple[int, bytes]]) -> tuple[pb.Batch, list[int]]:
        """A batch of the rows that parse (with the current ledger), and their seqs.

        A row whose payload does not parse (a damaged spool) is moved aside as rejected
        rather than stopping the shipper.
        """
        batch = pb.Batch(batch_id=self._next_batch_id, node=self.node, agent_version=__version__)
        self._next_batch_id += 1
        add = batch.gpu_samples.add
        seqs: list[int] = []
        damaged: list[int] = []
        for seq, payload in rows:
            if payload[:1] == HOST_PAYLOAD_PREFIX:
                try:
                    batch.host_samples.add().MergeFromString(payload[1:])
                    seqs.append(seq)
                except DecodeError:
                    del batch.host_samples[-1]
                    damaged.append(seq)
                continue
            try:
                add().MergeFromString(payload)
                seqs.append(seq)
            except DecodeError:
                del batch.gpu_samples[-1]
                damaged.append(seq)
        if damaged:
            self.spool.reject(damaged, "spooled payload is damaged and does not parse")
            log.error("spool: %d damaged samples do not parse; moved aside as rejected", len(damaged))
        batch.ledger.CopyFrom(ledger_proto(self.spool.ledger(), time.time_ns()))
        return batch, seqs

    async def run(self, stop: asyncio.Event) -> None:
        """Ship until ``stop`` is set; reconnects forever (no time-based give-up).

        The backoff (full jitter, 0.2 s doubling up to ``reconnect_max_s``) restarts from the
        bottom after a session that got any batch acknowledged.
        """
        attempt = 0
        failures = 0  # sessions failed since the last one that got an ack
        while not stop.is_set():
            self._progressed = False
            hint_s = 0.0
            try:
                await self._session(stop)
                error = ""
            except grpc.aio.AioRpcError as exc:
                error = f"{exc.code().name}: {exc.details()}"
            except _Reconnect as exc:
                error = str(exc)
                hint_s = min(exc.retry_after_s, self.conn.reconnect_max_s)
            except Exception as exc:  # any other failure of a session: never ends shipping
                error = f"{type(exc).__name__}: {exc}"
                log.error("shipping session failed unexpectedly (%s); reconnecting", error,
                          exc_info=not isinstance(exc, (OSError, asyncio.InvalidStateError)))
            if self._progressed:
                attempt = 0
                failures = 0
            if stop.is_set():
                break
            self.stats.reconnects += 1
            self.stats.last_error = error or self.stats.last_error
            failed = self.targets[self.target]
            failures += 1
            self.target = (self.target + 1) % len(self.targets)
            if failures % len(self.targets):
                delay = 0.0  # failover: another collector not tried since the last good session
            else:
                # full jitter, but never sooner than the collector asked (Ack.retry_after_ms)
                delay = max(hint_s, random.uniform(0, min(self.conn.reconnect_max_s, 0.2 * 2**attempt)))
                attempt = min(attempt + 1, 16)
            # The first failure after a good session is a warning; the retries that follow are info.
            # A config mistake at the collector (node in no rack) is loud every time: nothing is stored.
            (log.error if "unknown_node" in error else log.warning if failures == 1 else log.info)(
                "collector %s: %s; reconnecting in %.2f s to %s (attempt %d, reconnects=%d)",
                failed, error or "session ended", delay, self.targets[self.target], failures,
                self.stats.reconnects,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    async def _session(self, stop: asyncio.Event) -> None:
        """One stream: announce the ledger, then send batches and read acks until stopped or broken."""
        in_flight: dict[int, list[int]] = {}
        self._sent_at.clear()
        address = self.targets[self.target]
        async with make_channel(self.conn, address) as channel:
            stub = pb_grpc.IngestStub(channel)
            call = stub.Stream(metadata=self._metadata)
            last_seq = 0
            last_sent = time.monotonic()
            # What is already spooled when a session starts is a backlog: it goes out at once.
            unsent_since: float | None = 0.0
            slot_free = asyncio.Event()
            slot_free.set()
            ack_seen = asyncio.Event()

            async def read_acks() -> None:
                async for ack in call:
                    seqs = in_flight.pop(ack.batch_id, None)
                    if seqs is None:
                        continue
                    if not seqs and ack.code == CODE_INVALID_ARGUMENT:
                        # A ledger-only batch refused (an older collector): stop sending those.
                        if self._ledger_only:
                            log.warning("collector refuses ledger-only batches (%s); ledgers now ride "
                                        "only on sample batches", ack.message)
                        self._ledger_only = False
                    elif ack.code == CODE_OK:
                        sent = self._sent_at.pop(ack.batch_id, None)
                        if self.on_ack is not None and seqs and sent is not None:
                            self.on_ack(time.monotonic() - sent[0], len(seqs),
                                        time.time_ns() - sent[1] if sent[1] else 0)
                        if self._announced != address:
                            self._announced = address
                            log.info("collector %s: storing this node's samples", address)
                        if seqs:
                            self.spool.acknowledge(seqs)
                            self.stats.batches_acked += 1
                        self._progressed = True
                    elif ack.code == CODE_INVALID_ARGUMENT:
                        self.spool.reject(seqs, ack.message)
                        self.stats.batches_rejected += 1
                        self.stats.rejections.append(ack.message)
                        log.error("collector rejected %d samples: %s", len(seqs), ack.message)
                        self._progressed = True
                    else:
                        raise _Reconnect(f"batch not stored ({ack.code}): {ack.message}",
                                         retry_after_s=ack.retry_after_ms / 1000.0)
                    slot_free.set()
                    ack_seen.set()
                    self.acked.set()
                raise _Reconnect("collector closed the stream")

            reader = asyncio.create_task(read_acks())
            stopper = asyncio.create_task(stop.wait())
            # The end of the ack stream or a stop wakes the loop wherever it waits (see _nap).
            reader.add_done_callback(self.new_data.ring)
            stopper.add_done_callback(self.new_data.ring)

            async def send(batch: pb.Batch, seqs: list[int]) -> bool:
                """Write one batch; False if stopped first (a write can block on a frozen peer)."""
                nonlocal last_sent
                in_flight[batch.batch_id] = seqs
                if self.on_ack is not None:
                    first_end_ns = min((g.end_ns for g in batch.gpu_samples), default=0)
                    self._sent_at[batch.batch_id] = (time.monotonic(), first_end_ns)
                writer = asyncio.ensure_future(call.write(batch))
                writer.add_done_callback(self.new_data.ring)
                while not (writer.done() or reader.done() or stopper.done()):
                    self.new_data.clear()
                    await self.new_data.wait()
                if not writer.done():
                    writer.cancel()
                    if reader.done():
                        reader.result()
                    return False
                try:
                    writer.result()
                # the collector ended the RPC under the write
                except (asyncio.InvalidStateError, grpc.aio.UsageError):
                    raise _Reconnect(f"{(await call.code()).name}: {await call.details()}") from None
                self.stats.batches_sent += 1
                last_sent = time.monotonic()
                return True

            try:
                if self._ledger_only:  # the ledger first: what was evicted while away
                    hello, _ = self._make_batch([])
                    if await send(hello, []):
                        self.stats.ledger_reports += 1
                while not stop.is_set():
                    if reader.done():
                        reader.result()
                    if len(in_flight) >= self.conn.max_in_flight:
                        slot_free.clear()
                        await self._wait_any(slot_free.wait(), reader, stopper)
                        continue
                    # Lingering counts the unsent rows; they are read once, when the batch goes.
                    unsent = self.spool.pending_after(last_seq)
                    if not unsent:
                        unsent_since = None  # the next sample starts a new linger
                        if self._ledger_only and time.monotonic() - last_sent >= self.ledger_report_s:
                            batch, _ = self._make_batch([])
                            if await send(batch, []):
                                self.stats.ledger_reports += 1
                            continue
                        self.new_data.clear()
                        await self._nap(1.0)
                        continue
                    if unsent_since is None:
                        unsent_since = time.monotonic()
                    wait_s = lingering_s(unsent, self.conn.batch_max_samples, self.conn.linger_s,
                                         time.monotonic() - unsent_since, self.flush.is_set())
                    if wait_s > 0:
                        self.new_data.clear()
                        self.new_data.wanted = functools.partial(self._linger_ends, last_seq)
                        try:
                            await self._nap(wait_s)
                        finally:
                            self.new_data.wanted = None
                        continue
                    rows = self.spool.read_after(last_seq, self.conn.batch_max_samples)
                    if not rows:  # the count was high (rows acknowledged in an earlier session)
                        last_seq = self.spool.last_seq
                        continue
                    unsent_since = None
                    last_seq = rows[-1][0]
                    batch, seqs = self._make_batch(rows)
                    if not seqs:
                        continue
                    await send(batch, seqs)
                await self._final_ledger(call, in_flight, reader, ack_seen)
            finally:
                stopper.cancel()
                reader.cancel()
                # the session's error was already handled; a reader that ends later (the call's
                # cancellation can reach it as an RPC error, not as CancelledError) raises to no one
                reader.add_done_callback(retrieve_quietly)
                call.cancel()

    async def _final_ledger(
        self, call: grpc.aio.StreamStreamCall, in_flight: dict[int, list[int]],
        reader: asyncio.Task[None], ack_seen: asyncio.Event,
    ) -> None:
        """On a graceful stop, tell the collector the final ledger (best effort, bounded in time)."""
        if reader.done() or not self._ledger_only:
            return
        batch, _ = self._make_batch([])
        in_flight[batch.batch_id] = []
        deadline = time.monotonic() + self.final_ledger_timeout_s
        try:
            await asyncio.wait_for(call.write(batch), timeout=self.final_ledger_timeout_s)
            self.stats.ledger_reports += 1
            while batch.batch_id in in_flight and not reader.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                ack_seen.clear()
                await self._wait_any(ack_seen.wait(), reader, timeout=left)
        except (TimeoutError, grpc.aio.AioRpcError, grpc.aio.UsageError, _Reconnect):
            return

    def _linger_ends(self, after_seq: int) -> bool:
        """True once new samples fill a batch (or the agent flushes): a lingering shipper sends now."""
        return self.spool.pending_after(after_seq) >= self.conn.batch_max_samples or self.flush.is_set()

    async def _nap(self, timeout_s: float) -> None:
        """Wait until ``new_data`` is set (new samples, the end of the ack stream, a stop) or
        ``timeout_s`` passed: one future and one timer, no task, no exception (this runs often)."""
        timer = asyncio.get_running_loop().call_later(timeout_s, self.new_data.ring)
        try:
            await self.new_data.wait()
        finally:
            timer.cancel()

    @staticmethod
    async def _wait_any(coro: object, *tasks: asyncio.Task[object], timeout: float | None = None) -> None:
        waiter = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        try:
            await asyncio.wait([waiter, *tasks], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()


class _Reconnect(Exception):
    """End the session and reconnect; ``retry_after_s`` is the collector's hint (0: none)."""

    def __init__(self, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
