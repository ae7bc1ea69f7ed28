"""Blocking client: `Client(target)` and the `Session` handle."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import TypeVar

import grpc

from seqserve.api import seqserve_pb2 as pb
from seqserve.api import seqserve_pb2_grpc as pb_grpc
from seqserve.client._common import (
    DEFAULT_MAX_MESSAGE_BYTES,
    F32,
    ArrayLike,
    BatchResult,
    ModelInfo,
    ModelVersions,
    NotFoundError,
    SessionInfo,
    StreamResult,
    UnavailableError,
    batch_request,
    batch_result,
    channel_options,
    create_request,
    forecast_outputs,
    from_rpc_error,
    step_outputs,
    step_request,
)

_T = TypeVar("_T")


def _call(fn: Callable[[], _T]) -> _T:
    try:
        return fn()
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from None


class Client:
    """A connection to a seqserve server.

    >>> with Client("localhost:50051") as client:
    ...     with client.session("co2-lstm") as s:
    ...         y = s.step([[400.1], [400.3]])  # (T, F) in, (T, O) out
    """

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        timeout: float | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.target = target
        self.timeout = timeout  # per unary call; streams are not bounded
        self._channel = grpc.insecure_channel(target, options=channel_options(max_message_bytes))
        self._stub = pb_grpc.InferenceStub(self._channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel connects (raises UnavailableError after `timeout`)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise UnavailableError(f"no server at {self.target} after {timeout} s") from None

    # -- discovery -------------------------------------------------------------------------------

    def list_models(self) -> list[ModelVersions]:
        response = _call(
            lambda: self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout)
        )
        return [ModelVersions.from_pb(m) for m in response.models]

    def model_info(self, name: str, version: str | None = None) -> ModelInfo:
        request = pb.GetModelRequest(name=name, version=version or "")
        return ModelInfo.from_pb(_call(lambda: self._stub.GetModel(request, timeout=self.timeout)))

    # -- sessions --------------------------------------------------------------------------------

    def create_session(
        self, model: str, version: str | None = None, session_id: str | None = None
    ) -> SessionInfo:
        request = create_request(model, version, session_id)
        return SessionInfo.from_pb(
            _call(lambda: self._stub.CreateSession(request, timeout=self.timeout))
        )

    def get_session(self, session_id: str) -> SessionInfo:
        request = pb.GetSessionRequest(session_id=session_id)
        return SessionInfo.from_pb(
            _call(lambda: self._stub.GetSession(request, timeout=self.timeout))
        )

    def reset_session(self, session_id: str) -> SessionInfo:
        request = pb.ResetSessionRequest(session_id=session_id)
        return SessionInfo.from_pb(
            _call(lambda: self._stub.ResetSession(request, timeout=self.timeout))
        )

    def close_session(self, session_id: str) -> int:
        """Close the session; returns the steps it had consumed."""
        request = pb.CloseSessionRequest(session_id=session_id)
        response = _call(lambda: self._stub.CloseSession(request, timeout=self.timeout))
        return int(response.position)

    def session(
        self, model: str, version: str | None = None, session_id: str | None = None
    ) -> Session:
        """Create a session; use it in a `with` block to close it on exit."""
        return Session(self, self.create_session(model, version, session_id))

    # -- steps -----------------------------------------------------------------------------------

    def step(self, session_id: str, values: ArrayLike, position: int | None = None) -> F32:
        """One unary step call: values (F,) or (T, F) -> outputs (T, O)."""
        request = step_request(session_id, values, position=position)
        return step_outputs(_call(lambda: self._stub.Step(request, timeout=self.timeout)))

    def step_stream(
        self, steps: Iterable[tuple[str, ArrayLike]]
    ) -> Generator[StreamResult, None, None]:
        """Many sessions' steps on one stream; the i-th request gets request_id i.

        Answers of one session come in order; different sessions' answers may
        interleave. A failed step is a StreamResult with `error` set.
        """
        requests = (
            step_request(sid, values, request_id=i) for i, (sid, values) in enumerate(steps)
        )
        responses = self._stub.StepStream(requests)
        try:
            for response in responses:
                yield StreamResult.from_pb(response)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            responses.cancel()

    def batch_step(self, steps: Mapping[str, ArrayLike]) -> BatchResult:
        """The gateway path: {session_id: (F,) or (T, F) values} in one call."""
        request = batch_request(steps)
        return batch_result(
            request, _call(lambda: self._stub.BatchStep(request, timeout=self.timeout))
        )

    def forecast(self, session_id: str, horizon: int) -> F32:
        """Roll an autoregressive model forward: outputs (horizon, O); the session is unchanged."""
        request = pb.ForecastRequest(session_id=session_id, horizon=horizon)
        response = _call(lambda: self._stub.Forecast(request, timeout=self.timeout))
        return forecast_outputs(response)


class Session:
    """A server-side session: its recurrent state lives on the server."""

    def __init__(self, client: Client, info: SessionInfo) -> None:
        self.client = client
        self.id = info.session_id
        self.model = info.model
        self.version = info.version
        self._closed = False

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._closed:
            with contextlib.suppress(NotFoundError):  # already evicted: nothing to close
                self.close()

    def step(self, values: ArrayLike, position: int | None = None) -> F32:
        """values (F,) or (T, F) -> outputs (T, O)."""
        return self.client.step(self.id, values, position)

    def stream(self, steps: Iterable[ArrayLike]) -> Iterator[F32]:
        """Pipelined steps over one stream: yields each chunk's outputs (T, O) in order.

        A failed step raises its typed error; the steps before it were applied.
        """
        results = self.client.step_stream((self.id, values) for values in steps)
        with contextlib.closing(results):  # cancels the call when the caller stops early
            for counter, result in zip(itertools.count(), results, strict=False):
                if result.error is not None:
                    raise result.error
                assert result.request_id == counter and result.outputs is not None
                yield result.outputs

    def forecast(self, horizon: int) -> F32:
        return self.client.forecast(self.id, horizon)

    def info(self) -> SessionInfo:
        return self.client.get_session(self.id)

    def reset(self) -> SessionInfo:
        return self.client.reset_session(self.id)

    def close(self) -> int:
        position = self.client.close_session(self.id)
        self._closed = True
        return position
