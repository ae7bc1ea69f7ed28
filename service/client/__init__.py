"""Python client for seqserve: `Client` (blocking) and `AsyncClient` (asyncio).

    from seqserve.client import Client

    with Client("localhost:50051") as client, client.session("co2-lstm") as s:
        y = s.step([[400.1], [400.3]])          # (T, F) in, (T, O) out
        for y in s.stream(chunks):              # pipelined over one stream
            ...
        future = s.forecast(52)                 # (horizon, O); the session is unchanged

TLS: `Client(target, tls=TLS(ca="ca.pem"))` (see seqserve.client.tls); a
server with --auth-tokens also needs `token=...`.

Failed calls raise a `SeqServeClientError` subclass carrying `.code` (the
gRPC status code) and `.message` (what was expected and what arrived).
"""

from seqserve.client._common import (
    AlreadyExistsError,
    BatchResult,
    CallCancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    ModelInfo,
    ModelVersions,
    NotFoundError,
    ReloadReport,
    ResourceExhaustedError,
    SeqServeClientError,
    SessionInfo,
    StateInfo,
    StreamResult,
    UnavailableError,
)
from seqserve.client.aio import AsyncClient, AsyncSession
from seqserve.client.retry import NO_RETRY, RetryPolicy
from seqserve.client.sync import Client, Session
from seqserve.client.tls import TLS

__all__ = [
    "NO_RETRY",
    "TLS",
    "AlreadyExistsError",
    "AsyncClient",
    "AsyncSession",
    "BatchResult",
    "CallCancelledError",
    "Client",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "ModelInfo",
    "ModelVersions",
    "NotFoundError",
    "ReloadReport",
    "ResourceExhaustedError",
    "RetryPolicy",
    "SeqServeClientError",
    "Session",
    "SessionInfo",
    "StateInfo",
    "StreamResult",
    "UnavailableError",
]
