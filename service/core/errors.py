"""Typed errors raised by the serving core.

The core never imports grpc; the front ends map each class to a status code
through one table (service/grpc_errors.py) so the mapping lives in one place.
Messages say what was expected and what arrived.
"""

from __future__ import annotations


class SeqServeError(Exception):
    """Base class: every error the core raises on purpose."""


class InvalidArgument(SeqServeError):
    """Malformed input: wrong value count, T == 0, too many steps, NaN/Inf."""


class NotFound(SeqServeError):
    """Unknown model, version or session (an expired session included)."""


class AlreadyExists(SeqServeError):
    """A client-chosen session id that is already in use."""


class ResourceExhausted(SeqServeError):
    """Too many sessions, a full queue, a message too large."""


class FailedPrecondition(SeqServeError):
    """A step out of order, a model being unloaded, no step yet to forecast from."""


class Unavailable(SeqServeError):
    """The server is shutting down."""


class Internal(SeqServeError):
    """Something unexpected, e.g. ONNX Runtime failing inside a batch."""


def quoted(text: str, limit: int = 128) -> str:
    """`repr(text)`, cut after `limit` characters.

    Messages quote what arrived; a status message travels in the trailers, so
    echoing a megabyte-long id whole would break the very answer that refuses it.
    """
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"
