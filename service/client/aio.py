"""asyncio client: `AsyncClient(target)` and the `AsyncSession` handle."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Iterable, Mapping
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
        timeout: float | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = grpc.aio.insecure_channel(
            target, options=channel_options(max_message_bytes)
        )
        self._stub = pb_grpc.InferenceStub(self._channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def list_models(self) -> list[ModelVersions]:
        response = await _call(self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout))
        return [ModelVersions.from_pb(m) for m in response.models]

    async def model_info(self, name: str, version: str | None = None) -> ModelInfo:
        request = pb.GetModelRequest(name=name, version=version or "")
        return ModelInfo.from_pb(await _call(self._stub.GetModel(request, timeout=self.timeout)))

    async def create_session(
        self, model: str, version: str | None = None, session_id: str | None = None
    ) -> SessionInfo:
        request = create_request(model, version, session_id)
        return SessionInfo.from_pb(
            await _call(self._stub.CreateSession(request, timeout=self.timeout))
        )

    async def get_session(self, session_id: str) -> SessionInfo:
        request = pb.GetSessionRequest(session_id=session_id)
        return SessionInfo.from_pb(
            await _call(self._stub.GetSession(request, timeout=self.timeout))
        )

    async def reset_session(self, session_id: str) -> SessionInfo:
        request = pb.ResetSessionRequest(session_id=session_id)
        return SessionInfo.from_pb(
            await _call(self._stub.ResetSession(request, timeout=self.timeout))
        )

    async def close_session(self, session_id: str) -> int:
        request = pb.CloseSessionRequest(session_id=session_id)
        response = await _call(self._stub.CloseSession(request, timeout=self.timeout))
        return int(response.position)

    @contextlib.asynccontextmanager
    async def session(
        self, model: str, version: str | None = None, session_id: str | None = None
    ) -> AsyncIterator[AsyncSession]:
        """`async with client.session("m") as s:` creates a session and closes it on exit."""
        s = AsyncSession(self, await self.create_session(model, version, session_id))
        try:
            yield s
        finally:
            with contextlib.suppress(NotFoundError):  # already evicted or closed
                await s.close()

    async def step(self, session_id: str, values: ArrayLike, position: int | None = None) -> F32:
        request = step_request(session_id, values, position=position)
        return step_outputs(await _call(self._stub.Step(request, timeout=self.timeout)))

    async def step_stream(
        self, steps: Iterable[StepItem] | AsyncIterable[StepItem]
    ) -> AsyncIterator[StreamResult]:
        """Many sessions' steps on one stream; the i-th request gets request_id i."""

        async def requests() -> AsyncIterator[pb.StepRequest]:
            i = 0
            async for sid, values in _aiter(steps):
                yield step_request(sid, values, request_id=i)
                i += 1

        call = self._stub.StepStream(requests())
        try:
            async for response in call:
                yield StreamResult.from_pb(response)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    async def batch_step(self, steps: Mapping[str, ArrayLike]) -> BatchResult:
        request = batch_request(steps)
        return batch_result(
            request, await _call(self._stub.BatchStep(request, timeout=self.timeout))
        )

    async def forecast(self, session_id: str, horizon: int) -> F32:
        request = pb.ForecastRequest(session_id=session_id, horizon=horizon)
        response = await _call(self._stub.Forecast(request, timeout=self.timeout))
        return forecast_outputs(response)


class AsyncSession:
    def __init__(self, client: AsyncClient, info: SessionInfo) -> None:
        self.client = client
        self.id = info.session_id
        self.model = info.model
        self.version = info.version

    async def step(self, values: ArrayLike, position: int | None = None) -> F32:
        return await self.client.step(self.id, values, position)

    async def stream(
        self, steps: Iterable[ArrayLike] | AsyncIterable[ArrayLike]
    ) -> AsyncIterator[F32]:
        """Pipelined steps over one stream: yields each chunk's outputs (T, O) in order."""

        async def items() -> AsyncIterator[StepItem]:
            async for values in _aiter(steps):
                yield self.id, values

        results = self.client.step_stream(items())
        try:
            async for result in results:
                if result.error is not None:
                    raise result.error
                assert result.outputs is not None
                yield result.outputs
        finally:
            await results.aclose()  # type: ignore[attr-defined]

    async def forecast(self, horizon: int) -> F32:
        return await self.client.forecast(self.id, horizon)

    async def info(self) -> SessionInfo:
        return await self.client.get_session(self.id)

    async def reset(self) -> SessionInfo:
        return await self.client.reset_session(self.id)

    async def close(self) -> int:
        return await self.client.close_session(self.id)
