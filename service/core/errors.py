"""Typed errors raised by the serving core, and the request ids of unexpected failures.

The core never imports grpc; the front ends map each class to a status code
through one table (seqserve.grpc.status) so the mapping lives in one place.
Messages say what was expected and what arrived.

An unexpected failure is logged once, with its traceback, under a request id
(`internal`); the `Internal` error it returns carries that id, and every
caller the failure reaches (each step of a failed model call) gets that same
error, so the id a client reports is the one next to the traceback.
"""

from __future__ import annotations

import logging
import secrets


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
    """Something unexpected, e.g. ONNX Runtime failing inside a batch; logged under `request_id`."""

    def __init__(self, message: str, request_id: str = "") -> None:
        super().__init__(message)
        self.request_id = request_id


def quoted(text: str, limit: int = 128) -> str:
    """`repr(text)`, cut after `limit` characters.

    Messages quote what arrived; a status message travels in the trailers, so
    echoing a megabyte-long id whole would break the very answer that refuses it.
    """
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def new_request_id() -> str:
    """A short id for a log line that a client's error message quotes (48 random bits)."""
    return secrets.token_hex(6)


def internal(log: logging.Logger, what: str, exc: BaseException, detail: str = "") -> Internal:
    """Log an unexpected failure once, with its traceback, and return the error to report.

    `what` says what failed, for the log and the client alike; `detail` is added
    to the log line only. The message names the exception's type, not its text:
    internals stay in the log.
    """
    request_id = new_request_id()
    log.error("%s%s (request id %s)", what, detail, request_id, exc_info=exc)
    return Internal(
        f"{what} ({type(exc).__name__}; request id {request_id}, see the server log)", request_id
    )
