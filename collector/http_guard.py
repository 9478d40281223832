"""Bounds for the collector's HTTP API, so slow or numerous clients cannot take ingest down.

aiohttp's server has no deadline for receiving a request and no connection limit, so 1,100
half-sent requests once held every file descriptor the collector had (and with them its connections
to InfluxDB). ``HttpGuard`` wraps aiohttp's protocol factory:

* at most ``max_connections`` connections are open: a new one evicts the oldest connection that
  is still waiting for a request head (a complete head, or a request being handled, is never
  evicted), so slow clients cannot keep a health check out; it is closed at once only when every
  open connection is busy. Connections that have sent part of a head (a slow client's mark) go
  before those the server has read nothing from yet: under a flood the server accepts a burst of
  connections before it reads any of them, and a health check accepted in such a burst has its
  whole request waiting in the socket, not yet read;
* a connection must deliver a complete request head within ``header_timeout_s`` of being opened,
  and again after each response (an idle keep-alive connection is closed then too);
* request bodies are limited by the application's ``client_max_size`` (``http_max_body_bytes``).

Counted in ``evicted``, ``refused`` (over the cap) and ``timed_out`` (no request in time).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Refused(asyncio.Protocol):
    """Closes a connection beyond the cap as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Guarded(asyncio.Protocol):
    """Forwards to aiohttp's protocol; closes the connection when no request head arrives in time."""

    def __init__(self, inner: Any, guard: HttpGuard) -> None:
        self.inner = inner
        self.guard = guard
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.busy = 0
        #: A complete request head (up to its blank line) has arrived and awaits its handler.
        self.head_complete = False
        #: Some bytes of a request head have arrived (reset after each response).
        self.started = False
        self._tail = b""

    def arm(self) -> None:
        self.disarm()
        self.timer = asyncio.get_running_loop().call_later(self.guard.header_timeout_s, self._expire)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    @property
    def evictable(self) -> bool:
        """Waiting for (the rest of) a request head: nothing of value would be lost."""
        return self.busy == 0 and not self.head_complete

    def _expire(self) -> None:
        self.timer = None
        if self.evictable and self.transport is not None and not self.transport.is_closing():
            self.guard.timed_out += 1
            self.transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.guard.open[transport] = self
        self.arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.head_complete and self.busy == 0:
            self.started = True
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self.head_complete = True
                self.disarm()
            self._tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self.inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if self.transport is not None:
            self.guard.open.pop(self.transport, None)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class HttpGuard:
    """See the module docstring."""

    def __init__(self, max_connections: int, header_timeout_s: float) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.open: dict[asyncio.BaseTransport, _Guarded] = {}
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0

    def factory(self, inner: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        """The protocol factory to give ``loop.create_server`` instead of aiohttp's ``inner``."""

        def make() -> asyncio.Protocol:
            if len(self.open) >= self.max_connections and not self._evict_one():
                self.refused += 1
                return _Refused()
            return _Guarded(inner(), self)

        return make

    def _evict_one(self) -> bool:
        """Abort the oldest open connection with no request in progress, one that has sent part of a
        head before one not read from yet; False if all are busy."""
        victim = None
        for transport, conn in self.open.items():
            if conn.evictable:
                if conn.started:
                    victim = transport
                    break
                if victim is None:
                    victim = transport
        if victim is None:
            return False
        self.open.pop(victim).disarm()
        self.evicted += 1
        victim.abort()  # type: ignore[attr-defined]
        return True

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """A request head arrived: no deadline while it is handled; a new one after the response."""
        conn = self.open.get(request.transport) if request.transport is not None else None
        if conn is None:
            return await handler(request)
        conn.busy += 1
        conn.head_complete = False
        conn.disarm()
        try:
            return await handler(request)
        finally:
            conn.busy -= 1
            if conn.busy == 0:
                conn._tail = b""
                conn.started = False
                conn.arm()
