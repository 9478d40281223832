"""A small authenticating reverse proxy for the tests, run as its own process.

It checks HTTP Basic credentials against ``--users`` (``name:password,...``), drops whatever
identity header the client sent, names the authenticated user in ``X-Forwarded-User`` and forwards
the request to ``--upstream`` from the local address ``--source`` (the collector's trusted proxy).

    python -m tests.security.auth_proxy --port P --upstream http://127.0.0.1:8080 --source 127.0.0.2 \\
        --users alice:pw1,ops:pw2
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import signal

import aiohttp
from aiohttp import web

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length", "authorization",
              "x-forwarded-user"}


def make_app(upstream: str, source: str, users: dict[str, str]) -> web.Application:
    session: dict[str, aiohttp.ClientSession] = {}

    async def start(_app: web.Application) -> None:
        session["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0)))

    async def stop(_app: web.Application) -> None:
        await session["s"].close()

    async def forward(request: web.Request) -> web.Response:
        scheme, _, cred = request.headers.get("Authorization", "").partition(" ")
        try:
            name, _, password = base64.b64decode(cred).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            name = password = ""
        if scheme.lower() != "basic" or not name or users.get(name) != password:
            return web.Response(status=401, text="proxy: log in", headers={"WWW-Authenticate": "Basic"})
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["X-Forwarded-User"] = name
        async with session["s"].get(upstream + request.path_qs, headers=headers) as resp:
            body = await resp.read()
            return web.Response(status=resp.status, body=body,
                                content_type=resp.content_type or "application/octet-stream")

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("GET", "/{tail:.*}", forward)
    return app


async def main_async(args: argparse.Namespace) -> None:
    users = dict(pair.split(":", 1) for pair in args.users.split(","))
    runner = web.AppRunner(make_app(args.upstream.rstrip("/"), args.source, users))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    print(f"auth proxy on 127.0.0.1:{args.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--users", required=True)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
