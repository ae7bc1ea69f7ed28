"""Blocking client: `Client(target)` and the `Session` handle."""

from __future__ import annotations

import collections
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import TypeVar

import grpc

from seqserve.api import seqserve_pb2 as pb
from seqserve.api import seqserve_pb2_grpc as pb_grpc
from seqserve.client._common import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_TIMEOUT_S,
    F32,
    ArrayLike,
    BatchResult,
    FailedPreconditionError,
    Metadata,
    ModelInfo,
    ModelVersions,
    NotFoundError,
    ReloadReport,
    SeqServeClientError,
    SessionInfo,
    StreamResult,
    UnavailableError,
    batch_request,
    batch_result,
    channel_options,
    create_request,
    enable_ring_hash,
    forecast_outputs,
    from_rpc_error,
    from_stream_error,
    import_request,
    routed,
    step_outputs,
    step_request,
    steps_in,
)
from seqserve.client.retry import RETAINED, RetryPolicy
from seqserve.client.tls import TLS, as_tls

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
        timeout: float | None = DEFAULT_TIMEOUT_S,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 (frozen: one value shared)
        ring_hash: bool = False,
        token: str | None = None,
        tls: TLS | bool | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout  # per unary call; streams are not bounded
        self.retry = retry  # how Session handles retry their steps (NO_RETRY: never)
        # Sent on every call as `authorization: Bearer TOKEN` (a server with --auth-tokens).
        self._auth: Metadata = (("authorization", f"Bearer {token}"),) if token else ()
        if ring_hash:  # before the channel: grpcio reads the experiment there
            enable_ring_hash()
        options = channel_options(max_message_bytes, ring_hash)
        secure = as_tls(tls)  # None: plaintext
        if secure is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(
                target, secure.credentials(), options=options + secure.options()
            )
        self._stub = pb_grpc.InferenceStub(self._channel)  # type: ignore[no-untyped-call]
        self._admin = pb_grpc.AdminStub(self._channel)  # type: ignore[no-untyped-call]

    def _meta(self, session_id: str | None = None) -> Metadata:
        """A call's metadata: the token, and the session for routing."""
        return self._auth + routed(session_id)

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
            lambda: self._stub.ListModels(
                pb.ListModelsRequest(), timeout=self.timeout, metadata=self._auth
            )
        )
        return [ModelVersions.from_pb(m) for m in response.models]

    def reload_models(self) -> ReloadReport:
        """Make the server read its model repository again now (seqserve.v1.Admin)."""
        request = pb.ReloadModelsRequest()
        return ReloadReport.from_pb(
            _call(
                lambda: self._admin.ReloadModels(request, timeout=self.timeout, metadata=self._auth)
            )
        )

    def model_info(self, name: str, version: str | None = None) -> ModelInfo:
        request = pb.GetModelRequest(name=name, version=version or "")
        return ModelInfo.from_pb(
            _call(lambda: self._stub.GetModel(request, timeout=self.timeout, metadata=self._auth))
        )

    # -- sessions --------------------------------------------------------------------------------

    def create_session(
        self, model: str, version: str | None = None, session_id: str | None = None
    ) -> SessionInfo:
        request = create_request(model, version, session_id)
        return SessionInfo.from_pb(
            _call(
                lambda: self._stub.CreateSession(
                    request, timeout=self.timeout, metadata=self._meta(request.session_id)
                )
            )
        )

    def get_session(self, session_id: str) -> SessionInfo:
        request = pb.GetSessionRequest(session_id=session_id)
        return SessionInfo.from_pb(
            _call(
                lambda: self._stub.GetSession(
                    request, timeout=self.timeout, metadata=self._meta(request.session_id)
                )
            )
        )

    def reset_session(self, session_id: str) -> SessionInfo:
        request = pb.ResetSessionRequest(session_id=session_id)
        return SessionInfo.from_pb(
            _call(
                lambda: self._stub.ResetSession(
                    request, timeout=self.timeout, metadata=self._meta(request.session_id)
                )
            )
        )

    def close_session(self, session_id: str) -> int:
        """Close the session; returns the steps it had consumed."""
        request = pb.CloseSessionRequest(session_id=session_id)
        response = _call(
            lambda: self._stub.CloseSession(
                request, timeout=self.timeout, metadata=self._meta(request.session_id)
            )
        )
        return int(response.position)

    def session(
        self, model: str, version: str | None = None, session_id: str | None = None
    ) -> Session:
        """Create a session; use it in a `with` block to close it on exit."""
        info = self.create_session(model, version, session_id)
        return Session(self, info, self.model_info(info.model, info.version).input_size)

    # -- steps -----------------------------------------------------------------------------------

    def step(self, session_id: str, values: ArrayLike, position: int | None = None) -> F32:
        """One unary step call: values (F,) or (T, F) -> outputs (T, O)."""
        request = step_request(session_id, values, position=position)
        return step_outputs(
            _call(
                lambda: self._stub.Step(
                    request, timeout=self.timeout, metadata=self._meta(request.session_id)
                )
            )
        )

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
        responses = self._stub.StepStream(requests, metadata=self._auth)
        try:
            for response in responses:
                yield StreamResult.from_pb(response)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            responses.cancel()

    def batch_step(
        self, steps: Mapping[str, ArrayLike], positions: Mapping[str, int] | None = None
    ) -> BatchResult:
        """The gateway path: {session_id: (F,) or (T, F) values} in one call.

        `positions` ({session_id: position}, for every session or none) makes each
        item exactly-once: a batch resent after a lost answer is answered again.
        """
        request = batch_request(steps, positions=positions)
        return batch_result(
            request,
            _call(lambda: self._stub.BatchStep(request, timeout=self.timeout, metadata=self._auth)),
        )

    def export_session(self, session_id: str) -> bytes:
        """A session's whole state, checksummed: a serialized seqserve.v1.SessionState."""
        request = pb.ExportSessionRequest(session_id=session_id)
        state = _call(
            lambda: self._stub.ExportSession(
                request, timeout=self.timeout, metadata=self._meta(request.session_id)
            )
        )
        return bytes(state.SerializeToString())

    def import_session(self, state: bytes, session_id: str | None = None) -> SessionInfo:
        """A new session from `export_session`'s bytes (its id, unless `session_id` is given)."""
        request = import_request(state, session_id)
        return SessionInfo.from_pb(
            _call(
                lambda: self._stub.ImportSession(
                    request,
                    timeout=self.timeout,
                    metadata=self._meta(request.session_id or request.state.session_id),
                )
            )
        )

    def forecast(self, session_id: str, horizon: int) -> F32:
        """Roll an autoregressive model forward: outputs (horizon, O); the session is unchanged."""
        request = pb.ForecastRequest(session_id=session_id, horizon=horizon)
        response = _call(
            lambda: self._stub.Forecast(
                request, timeout=self.timeout, metadata=self._meta(request.session_id)
            )
        )
        return forecast_outputs(response)


class Session:
    """A server-side session: its recurrent state lives on the server.

    The handle tracks the session's position and sends it with every step,
    so a step that fails with UNAVAILABLE, or whose stream breaks, is sent
    again (seqserve.client.retry) and applied exactly once.
    """

    def __init__(self, client: Client, info: SessionInfo, input_size: int) -> None:
        self.client = client
        self.id = info.session_id
        self.model = info.model
        self.version = info.version
        self.input_size = input_size
        self.position = info.position  # steps applied, as far as this handle knows
        self.retries = 0  # steps sent again after UNAVAILABLE or a broken stream
        self._closed = False

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._closed:
            return
        if e is None:
            with contextlib.suppress(NotFoundError):  # already evicted: nothing to close
                self.close()
            return
        try:  # the exception that ended the block goes on, whatever closing does
            self.close()
        except SeqServeClientError as failed:
            e.add_note(f"closing session {self.id!r} afterwards failed too: {failed}")

    def step(self, values: ArrayLike, position: int | None = None) -> F32:
        """values (F,) or (T, F) -> outputs (T, O), at `position` (default: the handle's).

        A first attempt refused because the session moved on without this handle
        (a batch_step, another client) is sent again at the session's position.
        """
        at = self.position if position is None else position
        _, steps = steps_in(values, self.input_size)
        first = True
        for delay in itertools.chain(self.client.retry.delays(), [None]):
            try:
                outputs = self.client.step(self.id, values, at)
                break
            except FailedPreconditionError:
                if not (first and position is None) or (now := self.info().position) == at:
                    raise
                at = now  # nothing was applied: try once more where the session is
            except UnavailableError:
                if delay is None:
                    raise
                first = False  # it may have been applied: only its position may go again
                self.retries += 1
                time.sleep(delay)
        self.position = at + steps
        return outputs

    def stream(self, steps: Iterable[ArrayLike]) -> Iterator[F32]:
        """Pipelined steps over one stream: yields each chunk's outputs (T, O) in order.

        The stream starts at the session's position as the server has it. At
        most RETAINED steps are in flight. A broken stream (or a step answered
        UNAVAILABLE) is opened again and its unanswered steps sent again with
        their positions; another failure raises its typed error, the steps
        before it applied.
        """
        window = _Window(self.id, self.input_size, iter(steps), self.info().position)
        with contextlib.closing(window):
            for delay in itertools.chain(self.client.retry.delays(), [None]):
                try:
                    yield from self._attempt(window)
                    if window.refused is not None:  # the chunks before it are answered
                        raise window.refused
                    return
                except UnavailableError:
                    if delay is None:
                        raise
                    self.retries += 1
                    time.sleep(delay)

    def _attempt(self, window: _Window) -> Iterator[F32]:
        responses = self.client._stub.StepStream(
            window.requests(), metadata=self.client._meta(self.id)
        )
        try:
            for response in responses:
                outputs, position = window.answered(response)
                self.position = position
                yield outputs
        except grpc.RpcError as exc:
            raise from_stream_error(exc) from None
        finally:
            responses.cancel()
            window.broken()

    def _again(self, call: Callable[[], _T]) -> _T:
        """A call that changes nothing, retried on UNAVAILABLE as steps are."""
        for delay in itertools.chain(self.client.retry.delays(), [None]):
            try:
                return call()
            except UnavailableError:
                if delay is None:
                    raise
                time.sleep(delay)
        raise AssertionError("unreachable: the last attempt raises")

    def forecast(self, horizon: int) -> F32:
        return self._again(lambda: self.client.forecast(self.id, horizon))

    def info(self) -> SessionInfo:
        info = self._again(lambda: self.client.get_session(self.id))
        self.position = info.position
        return info

    def reset(self) -> SessionInfo:
        info = self.client.reset_session(self.id)
        self.position = info.position
        return info

    def export(self) -> bytes:
        """The session's whole state, checksummed (a serialized seqserve.v1.SessionState)."""
        return self._again(lambda: self.client.export_session(self.id))

    def close(self) -> int:
        position = self.client.close_session(self.id)
        self._closed = True
        return position


class _Window:
    """The steps of one Session.stream: the unanswered ones, resent after a break.

    The request iterator runs in grpc's thread and the answers are read in
    the caller's; a condition variable keeps at most RETAINED in flight.
    """

    def __init__(
        self, session_id: str, input_size: int, source: Iterator[ArrayLike], position: int
    ) -> None:
        self.session_id = session_id
        self.input_size = input_size
        self.source = source
        self.next_position = position  # where the next new step starts
        self.pending: collections.deque[tuple[int, pb.StepRequest]] = collections.deque()
        self.cond = threading.Condition()
        self.attempt = 0  # bumped when a stream breaks: its request iterator stops
        self.done = False  # the source is exhausted
        self.carried: ArrayLike | None = None  # taken from the source, not yet sent
        self.pulling = threading.Lock()
        # A chunk the client refused (wrongly shaped): nothing after it is sent, and the
        # caller gets the error once the chunks before it are answered.
        self.refused: SeqServeClientError | None = None

    def requests(self) -> Iterator[pb.StepRequest]:
        with self.cond:
            attempt = self.attempt
            resend = [request for _, request in self.pending]
        yield from resend  # answered again if they were applied, applied if not
        while True:
            with self.cond:
                while len(self.pending) >= RETAINED and self.attempt == attempt:
                    self.cond.wait()
                if self.attempt != attempt or self.done:
                    return
            with self.pulling:  # one iterator at a time: an old one may still be in next()
                try:
                    if self.carried is not None:
                        values, self.carried = self.carried, None
                    else:
                        values = next(self.source)
                    flat, t = steps_in(values, self.input_size)
                except (StopIteration, SeqServeClientError) as end:
                    with self.cond:
                        if isinstance(end, SeqServeClientError):
                            self.refused = end
                        self.done = True
                        self.cond.notify_all()
                    return
                with self.cond:
                    if self.attempt != attempt:
                        self.carried = values  # broken meanwhile: it goes with the next one
                        return
                    position = self.next_position
                    self.next_position += t
                    request = pb.StepRequest(
                        session_id=self.session_id,
                        values=flat.tolist(),
                        request_id=position,
                        position=position,
                    )
                    self.pending.append((position + t, request))  # resent if this stream breaks
            yield request

    def answered(self, response: pb.StepResponse) -> tuple[F32, int]:
        """The outputs of the oldest step in flight, and the position after it."""
        outputs = step_outputs(response)  # raises an in-band error, UNAVAILABLE included
        with self.cond:
            after, request = self.pending.popleft()
            assert response.request_id == request.request_id, (response, request)
            self.cond.notify_all()
        return outputs, after

    def broken(self) -> None:
        with self.cond:
            self.attempt += 1
            self.cond.notify_all()

    def close(self) -> None:
        self.broken()
