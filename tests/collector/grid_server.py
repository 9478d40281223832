"""A real HTTP server on 127.0.0.1 (random port) that plays grid intensity APIs in tests.

Handlers are looked up by exact path, then by the longest registered prefix ending
in ``/``; every request is recorded (path, query, headers) so tests can count them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "grid"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def fixture(name: str) -> Any:
    """A fixture file from tests/fixtures/grid, decoded."""
    return json.loads((FIXTURES / name).read_text())


@dataclass(frozen=True)
class Seen:
    path: str
    query: dict[str, str]
    headers: dict[str, str]


def json_handler(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.json_response(body, status=status, headers=headers)

    return handle


def status_handler(status: int, text: str = "", headers: dict[str, str] | None = None) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=text, headers=headers)

    return handle


def sequence(*handlers: Handler) -> Handler:
    """Answer with each handler in turn; the last one repeats."""
    calls = {"n": 0}

    async def handle(request: web.Request) -> web.StreamResponse:
        h = handlers[min(calls["n"], len(handlers) - 1)]
        calls["n"] += 1
        return await h(request)

    return handle


class GridServer:
    """An aiohttp.web server on 127.0.0.1 with swappable handlers and a request log."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.seen: list[Seen] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        self.stopping = asyncio.Event()

    def route(self, path: str, handler: Handler) -> None:
        self.handlers[path] = handler

    def count(self, path_prefix: str) -> int:
        return sum(1 for s in self.seen if s.path.startswith(path_prefix))

    def requests(self, path_prefix: str) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith(path_prefix)]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.path, dict(request.query), dict(request.headers)))
        handler = self.handlers.get(request.path)
        if handler is None:
            prefixes = [p for p in self.handlers if p.endswith("/") and request.path.startswith(p)]
            if prefixes:
                handler = self.handlers[max(prefixes, key=len)]
        if handler is None:
            return web.Response(status=404, text=f"no handler for {request.path}")
        return await handler(request)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    def slow_handler(self, delay_s: float) -> Handler:
        """A handler that answers only after ``delay_s`` (or when the server stops)."""

        async def handle(request: web.Request) -> web.StreamResponse:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay_s)
            return web.json_response({})

        return handle

    async def stop(self) -> None:
        self.stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
