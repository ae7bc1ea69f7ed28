"""The one table that maps exceptions to gRPC status codes.

Front ends call `to_status` for every exception they catch: a typed core error
keeps its message and gets its code from `STATUS_CODES` (an `Internal` error
was logged where it happened, and its message carries that request id);
anything else is unexpected here, and is logged once under a new request id
that the client's message quotes, without leaking internals.
"""

from __future__ import annotations

import logging

import grpc

from seqserve.api import seqserve_pb2 as pb
from seqserve.core import errors
from seqserve.grpc.auth import PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

# Ordered most specific first; `to_status` takes the first match by isinstance.
STATUS_CODES: dict[type[errors.SeqServeError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Internal: grpc.StatusCode.INTERNAL,
}


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client sees for `exc`."""
    if isinstance(exc, Unauthenticated):
        return grpc.StatusCode.UNAUTHENTICATED, str(exc)
    if isinstance(exc, PermissionDenied):
        return grpc.StatusCode.PERMISSION_DENIED, str(exc)
    if isinstance(exc, errors.SeqServeError):
        for cls, code in STATUS_CODES.items():
            if isinstance(exc, cls):
                return code, str(exc)
    failure = errors.internal(log, "internal error", exc)
    return grpc.StatusCode.INTERNAL, str(failure)


def to_status_pb(exc: BaseException) -> pb.Status:
    """`to_status` as the in-band Status message of the stream and batch calls."""
    code, message = to_status(exc)
    return pb.Status(code=status_number(code), message=message)


def status_number(code: grpc.StatusCode) -> int:
    """The google.rpc.Code number of a grpc.StatusCode (its value is (number, name))."""
    number: int = code.value[0]
    return number
