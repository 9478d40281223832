"""collector/http_guard.py over real sockets: which connection a new one evicts at the cap."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from gridwatt.collector.http_guard import HttpGuard

pytestmark = pytest.mark.unit

HALF_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@contextlib.asynccontextmanager
async def _serving(guard: HttpGuard) -> AsyncIterator[int]:
    """A real aiohttp server of /healthz behind ``guard`` on a free port (yielded) while in use."""
    app = web.Application(middlewares=[guard.middleware])
    app.router.add_get("/healthz", _ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    assert runner.server is not None
    server = await asyncio.get_running_loop().create_server(guard.factory(runner.server), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await runner.cleanup()


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    """The server closed or reset the connection (False: still open after 5 s)."""
    try:
        data = await asyncio.wait_for(reader.read(1), 5)
    except TimeoutError:
        return False
    except OSError:  # reset
        return True
    return data == b""


async def _healthz_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Send a whole /healthz request on an open connection; the server's whole answer."""
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    return await asyncio.wait_for(reader.read(), 5)


def test_a_slow_partial_head_goes_before_an_older_connection_not_read_from_yet() -> None:
    async def run() -> tuple[bool, bytes, int]:
        guard = HttpGuard(max_connections=2, header_timeout_s=30.0)
        async with _serving(guard) as port:
            # fresh: accepted, nothing read from it yet (as a health check accepted in a burst)
            fresh_r, fresh_w = await asyncio.open_connection("127.0.0.1", port)
            await _until(lambda: len(guard.open) == 1, "the first connection")
            # slow: younger, but has sent half a head, which the server has read
            slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port)
            slow_w.write(HALF_HEAD)
            await slow_w.drain()
            # wait until the server has read it
            await _until(lambda: any(c._tail for c in guard.open.values()), "the half head")
            # a third connection, over the cap of 2: the slow one is evicted, not the older fresh one
            _third_r, third_w = await asyncio.open_connection("127.0.0.1", port)
            slow_closed = await _closed_by_server(slow_r)
            answer = await _healthz_answer(fresh_r, fresh_w)
            for w in (fresh_w, slow_w, third_w):
                w.close()
            return slow_closed, answer, guard.evicted

    slow_closed, answer, evicted = asyncio.run(run())
    assert slow_closed
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"ok")
    assert evicted == 1


def test_with_no_partial_head_the_oldest_waiting_connection_goes() -> None:
    async def run() -> tuple[bool, bytes]:
        guard = HttpGuard(max_connections=2, header_timeout_s=30.0)
        async with _serving(guard) as port:
            old_r, old_w = await asyncio.open_connection("127.0.0.1", port)
            await _until(lambda: len(guard.open) == 1, "the first connection")
            new_r, new_w = await asyncio.open_connection("127.0.0.1", port)
            await _until(lambda: len(guard.open) == 2, "the second connection")
            _third_r, third_w = await asyncio.open_connection("127.0.0.1", port)
            old_closed = await _closed_by_server(old_r)
            answer = await _healthz_answer(new_r, new_w)
            for w in (old_w, new_w, third_w):
                w.close()
            return old_closed, answer

    old_closed, answer = asyncio.run(run())
    assert old_closed
    assert answer.startswith(b"HTTP/1.1 200 OK")
