"""Why a gRPC call is refused, said once: servicers raise, the server answers.

A handler raises a `ServiceError` subclass (`NotFound("no model named 'x'")`);
`translate_errors` turns it into the call's status code and message. The gRPC
server every service runs (`grpc_server.GrpcServer`) applies it to every handler
once, when a servicer is registered, so no servicer calls `context.abort` itself.
Any other exception stays what gRPC makes of it (UNKNOWN, logged by the server).
A request whose bytes are not the method's message reaches no handler: it is answered
INVALID_ARGUMENT, with the parser's reason (`Undecodable`), where gRPC would say UNKNOWN.

>>> NotFound("no model named 'x'").code.name, str(NotFound("no model named 'x'"))
('NOT_FOUND', "no model named 'x'")
>>> type(error_for(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")).__name__
'ResourceExhausted'
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
import grpc
from google.protobuf.message import DecodeError


class ServiceError(Exception):
    """A refusal: the call ends with `code` and the message, which is what the client sees."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """A request that can never succeed as sent."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    """An unknown model, version, alias, feature set, ..."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    """The system is not in a state the request needs (retrying as is will not help)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(ServiceError):
    """A concurrent change voided the operation; the client may retry it."""

    code = grpc.StatusCode.ABORTED


class Unavailable(ServiceError):
    """Transient: a dependency (broker, object store) or the model is not there yet; retry."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ServiceError):
    """The server is at a limit (a full queue); retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServiceError):
    """The call's deadline passed before it could be answered."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Internal(ServiceError):
    """The server failed on this request (a bug, or a model that cannot run this input)."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE = {cls.code: cls for cls in (InvalidArgument, NotFound, FailedPrecondition, Aborted, Unavailable,
                                      ResourceExhausted, DeadlineExceeded, PermissionDenied, Unauthenticated,
                                      Internal)}


def error_for(code: grpc.StatusCode, message: str) -> ServiceError:
    """The error that answers a call with `code` (for code that decides the code at run time)."""
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls(message)
    error = ServiceError(message)
    error.code = code
    return error


Behavior = Callable[..., object]


class Undecodable:
    """What a request deserializer under `translating` returns for bytes that are not its message.

    >>> from driftline.v1 import registry_pb2
    >>> lenient(registry_pb2.GetAliasRequest.FromString)(b"\\xff").reason
    "the request cannot be decoded: Error parsing message with type 'driftline.v1.GetAliasRequest': Wire format was corrupt"
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def lenient(deserializer: Callable[[bytes], object] | None) -> Callable[[bytes], object] | None:
    """`deserializer` answering undecodable bytes with an `Undecodable` instead of raising: gRPC
    would end the call UNKNOWN ("Unexpected DecodeError"), the status of a server fault, for what
    is the client's mistake."""
    if deserializer is None:
        return None

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except DecodeError as exc:
            return Undecodable(f"the request cannot be decoded: {exc}")

    return deserialize


# Longest refusal message sent: messages quote the request ("unknown model '…'"), and a quoted
# string of megabytes would exceed the client's metadata limit (16 KiB), which then sees
# RESOURCE_EXHAUSTED "Stream removed" instead of the refusal.
MAX_MESSAGE_CHARS = 1000


def bounded(message: str) -> str:
    """`message`, cut to MAX_MESSAGE_CHARS with a note of what was cut.

    >>> cut = bounded("unknown model '" + "x" * 5000 + "'")
    >>> len(cut), cut[-26:]
    (1000, '… (5016 characters in all)')
    """
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    note = f"… ({len(message)} characters in all)"
    return message[:MAX_MESSAGE_CHARS - len(note)] + note


def _refuse_undecodable(request) -> None:
    if isinstance(request, Undecodable):
        raise InvalidArgument(request.reason)


def translate_errors(behavior: Behavior) -> Behavior:
    """`behavior` (a handler's function: coroutine, async generator, function or generator) with a
    raised `ServiceError` turned into the call's status code and message, and an `Undecodable`
    request refused before it runs."""
    if inspect.isasyncgenfunction(behavior):
        async def streaming(request, context):
            try:
                _refuse_undecodable(request)
            except ServiceError as exc:
                await context.abort(exc.code, bounded(exc.message))
            responses = behavior(request, context)
            try:
                async for response in responses:
                    yield response
            except ServiceError as exc:
                await context.abort(exc.code, bounded(exc.message))
            finally:
                await responses.aclose()  # at once, when the call ends early: its cleanup runs now
        return streaming
    if inspect.iscoroutinefunction(behavior):
        async def unary(request, context):
            try:
                _refuse_undecodable(request)
                return await behavior(request, context)
            except ServiceError as exc:
                await context.abort(exc.code, bounded(exc.message))
        return unary
    if inspect.isgeneratorfunction(behavior):
        def sync_streaming(request, context):
            try:
                _refuse_undecodable(request)
                yield from behavior(request, context)
            except ServiceError as exc:
                context.abort(exc.code, bounded(exc.message))
        return sync_streaming

    def sync_unary(request, context):
        try:
            _refuse_undecodable(request)
            return behavior(request, context)
        except ServiceError as exc:
            context.abort(exc.code, bounded(exc.message))
    return sync_unary


_BUILDERS = {"unary_unary": grpc.unary_unary_rpc_method_handler,
             "unary_stream": grpc.unary_stream_rpc_method_handler,
             "stream_unary": grpc.stream_unary_rpc_method_handler,
             "stream_stream": grpc.stream_stream_rpc_method_handler}


def translating(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same method handler (any cardinality) with its behavior under `translate_errors` and,
    for a unary request, its deserializer `lenient`."""
    for kind, build in _BUILDERS.items():
        behavior = getattr(handler, kind)
        if behavior is not None:
            deserializer = handler.request_deserializer
            if not handler.request_streaming:
                deserializer = lenient(deserializer)
            return build(translate_errors(behavior), request_deserializer=deserializer,
                         response_serializer=handler.response_serializer)
    return handler
