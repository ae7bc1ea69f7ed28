"""asyncio client: `AsyncClient(target)` and the `AsyncSession` handle."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
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
StepItem = tuple[str, ArrayLike]


async def _call(call: Awaitable[_T]) -> _T:
    try:
        return await call
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from None


async def _aiter(items: Iterable[_T] | AsyncIterable[_T]) -> AsyncIterator[_T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


class AsyncClient:
    """The asyncio twin of `Client`; create it inside the running event loop.

    >>> async with AsyncClient("localhost:50051") as client:
    ...     async with client.session("co2-lstm") as s:
    ...         y = await s.step([[400.1]])
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
        self.timeout = timeout
        self.retry = retry  # how AsyncSession handles retry their steps (NO_RETRY: never)
        # Sent on every call as `authorization: Bearer TOKEN` (a server with --auth-tokens).
        self._auth: Metadata = (("authorization", f"Bearer {token}"),) if token else ()
        if ring_hash:  # before the channel: grpcio reads the experiment there
            enable_ring_hash()
        options = channel_options(max_message_bytes, ring_hash)
        secure = as_tls(tls)  # None: plaintext
        if secure is None:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(
                target, secure.credentials(), options=options + secure.options()
            )
        self._stub = pb_grpc.InferenceStub(self._channel)  # type: ignore[no-untyped-call]
        self._admin = pb_grpc.AdminStub(self._channel)  # type: ignore[no-untyped-call]

    def _meta(self, session_id: str | None = None) -> Metadata:
        """A call's metadata: the token, and the session for routing."""
        return self._auth + routed(session_id)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def list_models(self) -> list[ModelVersions]:
        response = await _call(
            self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout, metadata=self._auth)
        )
        return [ModelVersions.from_pb(m) for m in response.models]

    async def reload_models(self) -> ReloadReport:
        """Make the server read its model repository again now (seqserve.v1.Admin)."""
        request = pb.ReloadModelsRequest()
        return ReloadReport.from_pb(
            await _call(
                self._admin.ReloadModels(request, timeout=self.timeout, metadata=self._auth)
            )
        )

    async def model_info(self, name: str, version: str | None = None) -> ModelInfo:
        request = pb.GetModelRequest(name=name, version=version or "")
        return ModelInfo.from_pb(
            await _call(self._stub.GetModel(request, timeout=self.timeout, metadata=self._auth))
        )

    async def create_session(
        self, model: str, version: str | None = None, session_id: str | None = None
    ) -> SessionInfo:
        request = create_request(model, version, session_id)
        return SessionInfo.from_pb(
            await _call(
                self._stub.CreateSession(
                    request, timeout=self.timeout, metadata=self._meta(request.session_id)
                )
            )
        )

    async def get_session(self, session_id: str) -> SessionInfo:
        request = pb.GetSessionRequest(session_id=session_id)
        return SessionInfo.from_pb(
            await _call(
                self._stub.GetSession(
                    request, timeout=self.timeout, metadata=self._meta(request.session_id)
                )
            )
        )

    async def reset_session(self, session_id: str) -> SessionInfo:
        request = pb.ResetSessionRequest(session_id=session_id)
        return SessionInfo.from_pb(
            await _call(
                self._stub.ResetSession(
                    request, timeout=self.timeout, metadata=self._meta(request.session_id)
                )
            )
        )

    async def close_session(self, session_id: str) -> int:
        request = pb.CloseSessionRequest(session_id=session_id)
        response = await _call(
            self._stub.CloseSession(
                request, timeout=self.timeout, metadata=self._meta(request.session_id)
            )
        )
        return int(response.position)

    @contextlib.asynccontextmanager
    async def session(
        self, model: str, version: str | None = None, session_id: str | None = None
    ) -> AsyncIterator[AsyncSession]:
        """`async with client.session("m") as s:` creates a session and closes it on exit."""
        info = await self.create_session(model, version, session_id)
        s = AsyncSession(self, info, (await self.model_info(info.model, info.version)).input_size)
        async with s:  # closes it; an exception of the block is never hidden by closing
            yield s

    async def step(self, session_id: str, values: ArrayLike, position: int | None = None) -> F32:
        request = step_request(session_id, values, position=position)
        return step_outputs(
            await _call(
                self._stub.Step(
                    request, timeout=self.timeout, metadata=self._meta(request.session_id)
                )
            )
        )

    async def step_stream(
        self, steps: Iterable[StepItem] | AsyncIterable[StepItem]
    ) -> AsyncIterator[StreamResult]:
        """Many sessions' steps on one stream; the i-th request gets request_id i."""

        async def requests() -> AsyncIterator[pb.StepRequest]:
            i = 0
            async for sid, values in _aiter(steps):
                yield step_request(sid, values, request_id=i)
                i += 1

        call = self._stub.StepStream(requests(), metadata=self._auth)
        try:
            async for response in call:
                yield StreamResult.from_pb(response)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    async def batch_step(
        self, steps: Mapping[str, ArrayLike], positions: Mapping[str, int] | None = None
    ) -> BatchResult:
        request = batch_request(steps, positions=positions)
        return batch_result(
            request,
            await _call(self._stub.BatchStep(request, timeout=self.timeout, metadata=self._auth)),
        )

    async def export_session(self, session_id: str) -> bytes:
        request = pb.ExportSessionRequest(session_id=session_id)
        state = await _call(
            self._stub.ExportSession(
                request, timeout=self.timeout, metadata=self._meta(request.session_id)
            )
        )
        return bytes(state.SerializeToString())

    async def import_session(self, state: bytes, session_id: str | None = None) -> SessionInfo:
        request = import_request(state, session_id)
        return SessionInfo.from_pb(
            await _call(
                self._stub.ImportSession(
                    request,
                    timeout=self.timeout,
                    metadata=self._meta(request.session_id or request.state.session_id),
                )
            )
        )

    async def forecast(self, session_id: str, horizon: int) -> F32:
        request = pb.ForecastRequest(session_id=session_id, horizon=horizon)
        response = await _call(
            self._stub.Forecast(
                request, timeout=self.timeout, metadata=self._meta(request.session_id)
            )
        )
        return forecast_outputs(response)


class AsyncSession:
    """The asyncio twin of `Session`: it tracks the position and retries steps exactly once."""

    def __init__(self, client: AsyncClient, info: SessionInfo, input_size: int) -> None:
        self.client = client
        self.id = info.session_id
        self.model = info.model
        self.version = info.version
        self.input_size = input_size
        self.position = info.position
        self.retries = 0  # steps sent again after UNAVAILABLE or a broken stream
        self._closed = False

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._closed:
            return
        if e is None:
            with contextlib.suppress(NotFoundError):  # already evicted: nothing to close
                await self.close()
            return
        try:  # the exception that ended the block goes on, whatever closing does
            await self.close()
        except SeqServeClientError as failed:
            e.add_note(f"closing session {self.id!r} afterwards failed too: {failed}")

    async def step(self, values: ArrayLike, position: int | None = None) -> F32:
        at = self.position if position is None else position
        _, steps = steps_in(values, self.input_size)
        first = True
        for delay in itertools.chain(self.client.retry.delays(), [None]):
            try:
                outputs = await self.client.step(self.id, values, at)
                break
            except FailedPreconditionError:
                if not (first and position is None) or (now := (await self.info()).position) == at:
                    raise
                at = now  # nothing was applied: try once more where the session is
            except UnavailableError:
                if delay is None:
                    raise
                first = False  # it may have been applied: only its position may go again
                self.retries += 1
                await asyncio.sleep(delay)
        self.position = at + steps
        return outputs

    async def stream(
        self, steps: Iterable[ArrayLike] | AsyncIterable[ArrayLike]
    ) -> AsyncIterator[F32]:
        """Pipelined steps over one stream: yields each chunk's outputs (T, O) in order.

        As `Session.stream`: at most RETAINED in flight, resent after a break.
        """
        source = _aiter(steps).__aiter__()
        pending: collections.deque[tuple[int, pb.StepRequest]] = collections.deque()
        room = asyncio.Condition()
        state = {"next": (await self.info()).position, "done": False}
        refused: list[SeqServeClientError] = []  # a wrongly shaped chunk: raised once the
        # chunks before it are answered, and nothing after it is sent

        async def requests(resend: list[pb.StepRequest]) -> AsyncIterator[pb.StepRequest]:
            for request in resend:
                yield request
            while True:
                async with room:
                    await room.wait_for(lambda: len(pending) < RETAINED)
                try:
                    values = await source.__anext__()
                    flat, t = steps_in(values, self.input_size)
                except StopAsyncIteration:
                    state["done"] = True
                    return
                except SeqServeClientError as exc:
                    refused.append(exc)
                    state["done"] = True
                    return
                at = int(state["next"])
                state["next"] = at + t
                request = pb.StepRequest(
                    session_id=self.id, values=flat.tolist(), request_id=at, position=at
                )
                pending.append((at + t, request))
                yield request

        for delay in itertools.chain(self.client.retry.delays(), [None]):
            call = self.client._stub.StepStream(
                requests([r for _, r in pending]), metadata=self.client._meta(self.id)
            )
            try:
                async for response in call:
                    outputs = step_outputs(response)  # raises in-band errors
                    async with room:
                        after, request = pending.popleft()
                        room.notify_all()
                    assert response.request_id == request.request_id
                    self.position = after
                    yield outputs
                    if state["done"] and not pending:
                        break
                if state["done"] and not pending:
                    if refused:
                        raise refused[0]
                    return
                raise UnavailableError("the stream ended with steps unanswered")
            except grpc.RpcError as exc:
                err = from_stream_error(exc)
                if not isinstance(err, UnavailableError) or delay is None:
                    raise err from None
            except UnavailableError:
                if delay is None:
                    raise
            finally:
                call.cancel()
            self.retries += 1
            await asyncio.sleep(delay)

    async def _again(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """A call that changes nothing, retried on UNAVAILABLE as steps are."""
        for delay in itertools.chain(self.client.retry.delays(), [None]):
            try:
                return await call()
            except UnavailableError:
                if delay is None:
                    raise
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt raises")

    async def forecast(self, horizon: int) -> F32:
        return await self._again(lambda: self.client.forecast(self.id, horizon))

    async def info(self) -> SessionInfo:
        info = await self._again(lambda: self.client.get_session(self.id))
        self.position = info.position
        return info

    async def reset(self) -> SessionInfo:
        info = await self.client.reset_session(self.id)
        self.position = info.position
        return info

    async def export(self) -> bytes:
        return await self._again(lambda: self.client.export_session(self.id))

    async def close(self) -> int:
        position = await self.client.close_session(self.id)
        self._closed = True
        return position
