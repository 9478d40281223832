"""A local HTTP server that stands in front of (or instead of) InfluxDB in tests.

It gives the answers a real InfluxDB cannot be made to give (429/503 with Retry-After, 500,
502, a 2.x-style 422) from a script, and forwards everything else to a real InfluxDB, so what
is finally stored is still checked in the real database. Without an upstream it answers
writes 204 and queries with an empty result. Listens on 127.0.0.1 only.

The one InfluxDB stand-in of the tests: async tests use :class:`InfluxFront` in their own event
loop; tests that run the collector as a separate process use :class:`InfluxFrontThread`, which
serves it from a thread of its own.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

import aiohttp
from aiohttp import web


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""


@dataclass
class Seen:
    """One request that reached the front: when (monotonic s), where, its body, what it got."""

    t: float
    path: str
    body: str
    status: int = 0


#: Decides the reply to one write body; None forwards it (or answers 204 without upstream).
Responder = Callable[[str], Reply | None]


class InfluxFront:
    """See the module docstring.

    ``script`` answers the first write requests in order (a Responder entry is called with the
    body, at the time of the request); then ``responder``, if any, decides.
    """

    def __init__(self, upstream: str | None = None, script: list[Reply | Responder] | None = None,
                 responder: Responder | None = None) -> None:
        self.upstream = upstream.rstrip("/") if upstream else None
        self.script = list(script or [])
        self.responder = responder
        self.writes: list[Seen] = []
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> InfluxFront:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._client = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.text()
        is_write = request.path.endswith("/write")
        reply: Reply | None = None
        if is_write:
            seen = Seen(time.monotonic(), request.path, body)
            self.writes.append(seen)
            if self.script:
                first = self.script.pop(0)
                reply = first if isinstance(first, Reply) else first(body)
            elif self.responder is not None:
                reply = self.responder(body)
        if reply is None and self.upstream is None:
            reply = Reply(204) if is_write else Reply(200, body='{"results":[{"statement_id":0}]}')
        if reply is None:
            assert self._client is not None
            forward = ("authorization", "content-type")
            headers = {k: v for k, v in request.headers.items() if k.lower() in forward}
            async with self._client.request(
                request.method, self.upstream + request.path_qs, data=body.encode(), headers=headers
            ) as resp:
                keep = ("content-type", "retry-after", "x-influxdb-error")
                reply = Reply(resp.status, {k: v for k, v in resp.headers.items() if k.lower() in keep},
                              await resp.text())
        if is_write:
            seen.status = reply.status
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body.encode())


class InfluxFrontThread:
    """An :class:`InfluxFront` served by an event loop in a daemon thread, for synchronous tests."""

    def __init__(self, front: InfluxFront) -> None:
        self.front = front
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return self.front.url

    def __enter__(self) -> InfluxFrontThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.front.__aenter__(), self._loop).result(timeout=30)
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.front.__aexit__(), self._loop).result(timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()
