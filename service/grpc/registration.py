"""Registering the seqserve.v1 services so that undecodable requests get INVALID_ARGUMENT.

grpc itself answers a request it cannot deserialize with UNKNOWN and the
parser's exception text ("Unexpected <class 'DecodeError'>: ..."), and logs it
as a servicer failure. `add_inference_servicer` registers the same methods as
the generated `add_InferenceServicer_to_server`, but each deserializer turns
bytes that do not parse into an `Undecodable` marker instead of raising: a
unary call is then refused before its handler runs; the stream handler meets
the marker among its requests and ends the stream with INVALID_ARGUMENT after
answering the steps it had already read (checking there costs one isinstance
per request, where wrapping the stream would add a generator hop per message).
The handlers are built once here, so no per-call interceptor is needed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from seqserve.api import seqserve_pb2 as pb


class Undecodable:
    """What a guarded deserializer returns for bytes that do not parse."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _lenient(request_type: Any) -> Callable[[bytes], Any]:
    name = request_type.DESCRIPTOR.full_name
    parse = request_type.FromString

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # DecodeError, or whatever the parser raises on garbage
            return Undecodable(
                f"expected a serialized {name} message, got {len(data)} bytes "
                f"that do not parse ({type(exc).__name__}: {exc})"
            )

    return deserialize


def _refusing(behavior: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Any]:
    async def handler(request: Any, context: Any) -> Any:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behavior(request, context)

    return handler


def add_servicer(
    servicer: Any, server: grpc.aio.Server, service: str = "Inference", module: Any = pb
) -> None:
    """Register every method of a service of `module` (generated code: seqserve.v1 unless
    told otherwise) on `server`, requests guarded."""
    descriptor = module.DESCRIPTOR.services_by_name[service]
    handlers: dict[str, Any] = {}
    for method in descriptor.methods:
        request_type = getattr(module, method.input_type.name)
        response_type = getattr(module, method.output_type.name)
        behavior = getattr(servicer, method.name)
        if method.client_streaming != method.server_streaming:
            raise TypeError(f"{method.full_name}: expected unary-unary or stream-stream")
        make = (
            grpc.stream_stream_rpc_method_handler
            if method.client_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            behavior if method.client_streaming else _refusing(behavior),
            request_deserializer=_lenient(request_type),
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(descriptor.full_name, handlers),)
    )
    # grpc serves registered methods without the generic lookup (the stubs lack it).
    server.add_registered_method_handlers(descriptor.full_name, handlers)  # type: ignore[attr-defined]
