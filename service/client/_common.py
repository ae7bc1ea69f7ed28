"""What the sync and asyncio clients share: typed errors, array conversion, results.

Arrays: a step is `input_size` values, so a 1-D array (F,) (or a scalar when
F == 1) is one step and a 2-D array (T, F) is T steps. Outputs are always
(T, O) float32 arrays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from seqserve.api import seqserve_pb2 as pb

F32 = npt.NDArray[np.float32]
ArrayLike = npt.ArrayLike

# Keep the client's limit in step with the server's default, so large chunks and
# batches are refused by the server's checks rather than by the client's transport.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# A unary call that has had no answer by then fails with DeadlineExceededError rather than
# waiting for ever on a server that is stuck or gone; Client(timeout=None) waits for ever.
DEFAULT_TIMEOUT_S = 30.0


# The request metadata that names the session a call is for, so that a proxy (Envoy's
# ring_hash) or gRPC's client-side ring hash keeps each session on one replica. Routing
# only: the server does not read it, and a call that lands elsewhere still works.
SESSION_HEADER = "x-seqserve-session"

Metadata = tuple[tuple[str, str], ...]


ROUTED_ID_MAX = 128  # the server's longest session id: a longer one names no session


def routed(session_id: str | None) -> Metadata:
    """The routing metadata of a call for one session: none for an id that no session can
    have (too long) or that metadata cannot carry (not printable ASCII), so that such a
    call still reaches the server and gets its error."""
    if (
        not session_id
        or len(session_id) > ROUTED_ID_MAX
        or not (session_id.isascii() and session_id.isprintable())
    ):
        return ()
    return ((SESSION_HEADER, session_id),)


def channel_options(max_message_bytes: int, ring_hash: bool = False) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Reconnect to a restarted server within moments (grpc's default backoff starts
        # at 1 s and grows to 2 minutes): steps in flight are resent once it is back.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if ring_hash:
        options.append(("grpc.service_config", RING_HASH_CONFIG))
    return options


# Client-side routing by session, for a target that resolves to every replica (a
# headless Service: dns:///seqserve-replicas:50051): gRPC's ring hash on the session
# header. grpcio reads the header only with this experiment on, before its first channel.
RING_HASH_ENV = "GRPC_EXPERIMENTAL_RING_HASH_SET_REQUEST_HASH_KEY"
RING_HASH_CONFIG = json.dumps(
    {"loadBalancingConfig": [{"ring_hash_experimental": {"requestHashHeader": SESSION_HEADER}}]}
)


def enable_ring_hash() -> None:
    """Turn on grpcio's request-hash-header experiment (read when grpc's core starts)."""
    os.environ.setdefault(RING_HASH_ENV, "true")


class SeqServeClientError(Exception):
    """A call failed; `code` is the gRPC status code, `message` the server's explanation."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgumentError(SeqServeClientError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(SeqServeClientError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(SeqServeClientError):
    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhaustedError(SeqServeClientError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(SeqServeClientError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class UnavailableError(SeqServeClientError):
    code = grpc.StatusCode.UNAVAILABLE


class InternalError(SeqServeClientError):
    code = grpc.StatusCode.INTERNAL


class DeadlineExceededError(SeqServeClientError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class CallCancelledError(SeqServeClientError):
    code = grpc.StatusCode.CANCELLED


_ERRORS: dict[grpc.StatusCode, type[SeqServeClientError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        ResourceExhaustedError,
        FailedPreconditionError,
        UnavailableError,
        InternalError,
        DeadlineExceededError,
        CallCancelledError,
    )
}


def error_for(code: grpc.StatusCode, message: str) -> SeqServeClientError:
    """The typed exception for a status code (the base class for codes without one)."""
    cls = _ERRORS.get(code)
    return cls(message) if cls is not None else SeqServeClientError(message, code)


def from_rpc_error(exc: grpc.RpcError) -> SeqServeClientError:
    """Translate a grpc error (sync or aio) into the typed exception."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return error_for(code, details or "")


def from_stream_error(exc: grpc.RpcError) -> SeqServeClientError:
    """`from_rpc_error` for the status a session handle's stream ended with while it was
    being read. A proxy that loses its upstream mid-stream (Envoy when a replica dies or
    restarts) resets the stream: gRPC reports INTERNAL "RST_STREAM", or CANCELLED though
    this client cancelled nothing. Either is a broken stream like any other, so it is
    UNAVAILABLE here, and its steps are resent by position (applied once)."""
    err = from_rpc_error(exc)
    if err.code == grpc.StatusCode.INTERNAL and "RST_STREAM" in err.message:
        return UnavailableError(f"the stream was reset on its way ({err.message})")
    if err.code == grpc.StatusCode.CANCELLED:
        return UnavailableError(f"the stream was cancelled on its way ({err.message})")
    return err


# google.rpc.Code numbers to grpc's codes (a StatusCode's value is (number, name)).
_CODES: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def from_status_pb(status: pb.Status) -> SeqServeClientError:
    """Translate an in-band error of the stream or batch call."""
    return error_for(_CODES.get(status.code, grpc.StatusCode.UNKNOWN), status.message)


def as_steps(values: ArrayLike) -> tuple[F32, int]:
    """Flatten steps for the wire: returns (values (T * F,), T)."""
    try:
        x = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"steps: expected numbers, got {exc}") from None
    if x.ndim > 2:
        raise InvalidArgumentError(f"steps: expected (F,) or (T, F) values, got shape {x.shape}")
    time = x.shape[0] if x.ndim == 2 else 1
    return x.ravel(), time  # (T * F,)


def steps_in(values: ArrayLike, input_size: int) -> tuple[F32, int]:
    """Steps for a model of `input_size` inputs, checked before anything is sent:
    (values (T * F,), T). A 1-D array is one step of F values (a scalar when F == 1);
    a 2-D array is T steps of F. Any other shape is refused here, so that a wrongly
    shaped input can never be read as more or fewer steps than it was meant to be
    (`[[315.0, 316.0]]` to a 1-input model is one step of 2 values: refused)."""
    try:
        x = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"steps: expected numbers, got {exc}") from None
    f = input_size
    ok = (
        (x.ndim == 0 and f == 1)
        or (x.ndim == 1 and x.shape[0] == f)
        or (x.ndim == 2 and x.shape[0] >= 1 and x.shape[1] == f)
    )
    if not ok:
        one = "a scalar, " if f == 1 else ""
        raise InvalidArgumentError(
            f"steps: expected {one}({f},) for one step or (T, {f}) for T steps of this "
            f"model's {f} input(s), got shape {x.shape}"
        )
    return x.ravel(), 1 if x.ndim < 2 else x.shape[0]  # (T * F,), T


def outputs_of(values: Any, time: int, output_size: int) -> F32:
    """Wire outputs back to (T, O)."""
    return np.asarray(values, dtype=np.float32).reshape(time, output_size)  # (T, O)


def step_request(
    session_id: str, values: ArrayLike, request_id: int = 0, position: int | None = None
) -> pb.StepRequest:
    flat, _ = as_steps(values)
    return pb.StepRequest(
        session_id=session_id, values=flat.tolist(), request_id=request_id, position=position
    )


def create_request(
    model: str, version: str | None, session_id: str | None
) -> pb.CreateSessionRequest:
    """None (or empty) version and id: the latest version, a server-minted id."""
    return pb.CreateSessionRequest(model=model, version=version or "", session_id=session_id or "")


def forecast_outputs(response: pb.ForecastResponse) -> F32:
    return outputs_of(response.outputs, response.horizon, response.output_size)  # (horizon, O)


def step_outputs(response: pb.StepResponse) -> F32:
    """A step response's (T, O) outputs, or its in-band error raised."""
    if response.HasField("error"):
        raise from_status_pb(response.error)
    return outputs_of(response.outputs, response.time, response.output_size)


@dataclass(frozen=True)
class ModelVersions:
    name: str
    versions: list[str]
    latest: str

    @classmethod
    def from_pb(cls, m: pb.ModelVersions) -> ModelVersions:
        return cls(m.name, list(m.versions), m.latest)


@dataclass(frozen=True)
class StateInfo:
    input_name: str
    output_name: str
    shape: tuple[int, ...]  # the batch axis written as -1
    batch_axis: int


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    cell: str
    input_size: int
    output_size: int
    hidden_size: int
    num_layers: int
    states: tuple[StateInfo, ...]
    parameters: int
    macs_per_step: int
    autoregressive: bool
    max_steps_per_request: int
    spec_json: str

    @classmethod
    def from_pb(cls, m: pb.ModelInfo) -> ModelInfo:
        return cls(
            name=m.name,
            version=m.version,
            cell=m.cell,
            input_size=m.input_size,
            output_size=m.output_size,
            hidden_size=m.hidden_size,
            num_layers=m.num_layers,
            states=tuple(
                StateInfo(s.input_name, s.output_name, tuple(s.shape), s.batch_axis)
                for s in m.states
            ),
            parameters=m.parameters,
            macs_per_step=m.macs_per_step,
            autoregressive=m.autoregressive,
            max_steps_per_request=m.max_steps_per_request,
            spec_json=m.spec_json,
        )


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    model: str
    version: str
    position: int  # steps consumed so far
    idle_seconds: float
    ttl_seconds: float

    @classmethod
    def from_pb(cls, s: pb.SessionInfo) -> SessionInfo:
        return cls(s.session_id, s.model, s.version, s.position, s.idle_seconds, s.ttl_seconds)


@dataclass(frozen=True)
class StreamResult:
    """One answer on a multiplexed stream: outputs (T, O), or the step's error."""

    session_id: str
    request_id: int
    outputs: F32 | None
    position: int
    error: SeqServeClientError | None = None

    @classmethod
    def from_pb(cls, r: pb.StepResponse) -> StreamResult:
        if r.HasField("error"):
            return cls(r.session_id, r.request_id, None, r.position, from_status_pb(r.error))
        return cls(
            r.session_id, r.request_id, outputs_of(r.outputs, r.time, r.output_size), r.position
        )


@dataclass(frozen=True)
class BatchResult:
    """A batch call's results by session id: successes in outputs, failures in errors."""

    outputs: dict[str, F32] = field(default_factory=dict)  # (T, O) each
    positions: dict[str, int] = field(default_factory=dict)
    errors: dict[str, SeqServeClientError] = field(default_factory=dict)


def batch_request(
    steps: Mapping[str, ArrayLike],
    request_id: int = 0,
    positions: Mapping[str, int] | None = None,
) -> pb.BatchStepRequest:
    """Columnar request: ids, times and every item's values concatenated."""
    ids = list(steps)
    flats, times = zip(*(as_steps(steps[sid]) for sid in ids), strict=True) if ids else ((), ())
    values = np.concatenate(flats) if flats else np.empty(0, np.float32)  # (sum T_i * F,)
    if positions is not None and set(positions) != set(ids):
        raise InvalidArgumentError("batch_step: expected a position for every session or none")
    return pb.BatchStepRequest(
        session_ids=ids,
        times=list(times),
        values_f32=values.astype("<f4", copy=False).tobytes(),  # no per-value conversion
        request_id=request_id,
        positions=[positions[sid] for sid in ids] if positions is not None else [],
    )


def import_request(state: bytes, session_id: str | None) -> pb.ImportSessionRequest:
    try:
        parsed = pb.SessionState.FromString(state)
    except Exception as exc:  # DecodeError: not a SessionState at all
        raise InvalidArgumentError(
            f"expected a serialized SessionState, got {len(state)} bytes that do not parse ({exc})"
        ) from None
    return pb.ImportSessionRequest(state=parsed, session_id=session_id or "")


def batch_result(request: pb.BatchStepRequest, response: pb.BatchStepResponse) -> BatchResult:
    result = BatchResult()
    failed = {e.index: from_status_pb(e.status) for e in response.errors}
    if response.outputs_f32:  # the answer to values_f32
        flat = np.frombuffer(response.outputs_f32, dtype="<f4").astype(np.float32)
    else:  # a server that answers in floats
        flat = np.asarray(response.outputs, dtype=np.float32)  # (sum T_i * O,)
    offset = 0
    for i, sid in enumerate(request.session_ids):
        length = response.output_lengths[i]
        if i in failed:
            result.errors[sid] = failed[i]
        else:
            time = request.times[i]
            result.outputs[sid] = flat[offset : offset + length].reshape(time, length // time)
            result.positions[sid] = response.positions[i]
        offset += length
    return result


@dataclass(frozen=True)
class ReloadReport:
    """What `reload_models` changed: (name, version) added and removed, and those refused
    with the reason (version "" for a model folder refused as a whole)."""

    added: list[tuple[str, str]]
    removed: list[tuple[str, str]]
    refused: list[tuple[str, str, str]]

    @classmethod
    def from_pb(cls, r: pb.ReloadModelsResponse) -> ReloadReport:
        return cls(
            added=[(c.name, c.version) for c in r.added],
            removed=[(c.name, c.version) for c in r.removed],
            refused=[(c.name, c.version, c.reason) for c in r.refused],
        )
