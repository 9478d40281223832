"""Refuse an Ingest call without a valid token before its message is read.

gRPC server interceptors see a call's metadata before any message. For an Ingest call whose bearer
token is missing or unknown, the interceptor answers with a handler that aborts UNAUTHENTICATED
without reading the request: its handler is request-streaming, so grpc does not receive (and buffer)
a unary request's body first. A 60 MB unauthenticated Write thus costs the collector nothing, and is
answered UNAUTHENTICATED rather than RESOURCE_EXHAUSTED. (The client-certificate binding needs the
call's auth context, which only the handler sees: it stays in IngestService.)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from gridwatt.collector.auth import AuthError, NodeAuth

log = logging.getLogger("gridwatt.collector.ingest")

INGEST_PREFIX = "/gridwatt.v1.Ingest/"


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED, before the body is read, for Ingest calls without a valid token."""

    def __init__(self, auth: NodeAuth) -> None:
        self.auth = auth
        self.refused = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method or ""
        if self.auth.token_count and method.startswith(INGEST_PREFIX):
            try:
                self.auth.identify(handler_call_details.invocation_metadata, {}, tokens_only=True)
            except AuthError as exc:
                self.refused += 1
                return _refusal(exc, method)
        return await continuation(handler_call_details)


def _refusal(exc: AuthError, method: str) -> grpc.RpcMethodHandler:
    async def refuse(_requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        log.warning("refused %s from %s (%s): %s", exc.code.name, context.peer(), method, exc)
        await context.abort(exc.code, str(exc))

    return grpc.stream_stream_rpc_method_handler(refuse)
