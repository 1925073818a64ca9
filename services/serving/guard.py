"""Undecodable requests are INVALID_ARGUMENT, saying so — not gRPC's "UNKNOWN: Unexpected DecodeError".

gRPC's asyncio server turns an exception in a request deserializer into UNKNOWN. Serving
registers its servicers through `guarded(add_XServicer_to_server)` instead: each method's
deserializer hands back an `Undecodable` marker on failure, and the method answers it with
INVALID_ARGUMENT before the servicer sees it.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from services.common.errors import InvalidArgument
from services.common.grpc_server import wrapping_handlers


class Undecodable:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _guard(service: str, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if handler.unary_unary is None or handler.request_deserializer is None:
        return handler
    decode = handler.request_deserializer
    behavior = handler.unary_unary
    name = f"{service}.{method}"

    def deserialize(data: bytes):
        try:
            return decode(data)
        except Exception as exc:  # DecodeError, and whatever else malformed bytes raise
            return Undecodable(exc)

    async def guarded(request, context):
        if isinstance(request, Undecodable):
            raise InvalidArgument(f"the request is not a valid {name} message: {request.error}")
        return await behavior(request, context)

    return grpc.unary_unary_rpc_method_handler(
        guarded, request_deserializer=deserialize, response_serializer=handler.response_serializer)


def guarded(add_to_server: Callable[[object, object], None]) -> Callable[[object, object], None]:
    """`add_to_server` with every unary method's decoding failure answered as INVALID_ARGUMENT."""
    return wrapping_handlers(add_to_server, _guard)
