"""Bearer-token access control for the gRPC server (installed only when a tokens file is set).

Every call to `portico.v1.Analytics` must carry `authorization: Bearer <token>` metadata;
the token's role must be at least the role the method needs (`METHOD_ROLES`). Health checking
and reflection stay open so load balancers and `grpcurl list` work without a secret.
Failures answer UNAUTHENTICATED (no/unknown token) or PERMISSION_DENIED (role too low);
the token itself never appears in a message or a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc

from proto.tokens import ROLES, TokenTable, role_allows

log = logging.getLogger("portico.grpc")

SERVICE = "/portico.v1.Analytics/"
METHOD_ROLES: Mapping[str, str] = {
    SERVICE + "Record": "write",
    SERVICE + "Query": "read",
    SERVICE + "ListEvents": "read",
    SERVICE + "Funnel": "read",
    SERVICE + "Export": "read",
    SERVICE + "Stats": "read",
    "/portico.v1.Outreach/MakeTrackedUrls": "write",  # signs URLs with the tracking secret
}
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the bearer token and its role before a call reaches a servicer."""

    def __init__(self, tokens: TokenTable, method_roles: Mapping[str, str] = METHOD_ROLES) -> None:
        self.tokens = tokens
        self.method_roles = method_roles

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        if method.startswith(OPEN_PREFIXES):
            return await continuation(details)
        required = self.method_roles.get(method, "admin")  # methods we don't know: admin only
        denial = self._check(details, method, required)
        handler = await continuation(details)
        if denial is None or handler is None:
            return handler
        return _denying_handler(handler, *denial)

    def _check(self, details: grpc.HandlerCallDetails, method: str,
               required: str) -> tuple[grpc.StatusCode, str] | None:
        header = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode("latin-1")
                break
        scheme, _, presented = header.partition(" ")
        if not header:
            return grpc.StatusCode.UNAUTHENTICATED, (
                "missing bearer token: send metadata 'authorization: Bearer <token>' "
                "(portico CLI: --token or PORTICO_TOKEN)")
        if scheme.lower() != "bearer" or not presented.strip():
            return grpc.StatusCode.UNAUTHENTICATED, "authorization metadata must be 'Bearer <token>'"
        token = self.tokens.lookup(presented.strip())
        if token is None:
            log.warning("gRPC %s refused: unknown token", method)
            return grpc.StatusCode.UNAUTHENTICATED, "unknown bearer token"
        if not role_allows(token.role, required):
            allowed = " or ".join(repr(r) for r in ROLES[ROLES.index(required):])
            log.warning("gRPC %s refused: token %r has role %r", method, token.name, token.role)
            return grpc.StatusCode.PERMISSION_DENIED, (
                f"token {token.name!r} has role {token.role!r}; {method.rsplit('/', 1)[-1]} needs {allowed}")
        return None


def _denying_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that aborts every call with `code`."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover  (makes this an async generator)

    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **kwargs)
    return grpc.stream_stream_rpc_method_handler(stream, **kwargs)
