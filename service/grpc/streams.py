"""One StepStream call: read steps, hand them to the core, write answers in order.

The hot path of the server, so it is lean on purpose: a reader task submits
each request to the core synchronously, the batcher settles the request's
`_Pending` reply inside its round, and the reply builds its response and
hands it to the writer (the RPC's own coroutine) through a deque. No task,
future or queue is made per step: one step costs three loop wake-ups (reader,
batcher, writer) rather than five.

Order: answers of one session leave in the order its steps were read, even
when a step is refused up front while an earlier one of that session is still
running; answers of different sessions leave as they are ready. At most
`max_in_flight` steps are read but not yet written; then the reader stops
reading, so HTTP/2 flow control pushes back on the client.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable
from typing import Any

import grpc

from seqserve.api import seqserve_pb2 as pb
from seqserve.core import errors
from seqserve.core.sessions import SessionManager, StepResult
from seqserve.grpc.registration import Undecodable
from seqserve.grpc.status import to_status, to_status_pb

Context = grpc.aio.ServicerContext[Any, Any]


def step_response(request: pb.StepRequest, result: StepResult) -> pb.StepResponse:
    """The answer to a step that was applied (the stream's and the unary call's)."""
    time, output_size = result.outputs.shape  # (T, O)
    return pb.StepResponse(
        session_id=request.session_id,
        request_id=request.request_id,
        time=time,
        output_size=output_size,
        outputs=result.outputs.ravel().tolist(),
        position=result.position,
    )


class _Pending:
    """A step read and not yet written: the Reply the batcher settles."""

    __slots__ = ("call", "gone", "request", "response")

    def __init__(self, call: StreamCall, request: pb.StepRequest) -> None:
        self.call = call
        self.request = request
        self.response: pb.StepResponse | None = None
        self.gone = False  # the stream ended: the batcher skips the step if not yet run

    def done(self) -> bool:
        return self.gone or self.response is not None

    def set_result(self, result: StepResult, /) -> None:
        self.response = step_response(self.request, result)
        self.call.settled(self)

    def set_exception(self, exception: BaseException, /) -> None:
        request = self.request
        self.response = pb.StepResponse(
            session_id=request.session_id,
            request_id=request.request_id,
            error=to_status_pb(exception),
        )
        self.call.settled(self)


class StreamCall:
    """The state of one StepStream: what is in flight, what is ready to write."""

    def __init__(
        self, sessions: SessionManager, principal: str, context: Context, max_in_flight: int
    ) -> None:
        self._sessions = sessions
        self._principal = principal
        self._context = context
        self._max_in_flight = max_in_flight
        # Per session, its steps in read order; a settled step waits here for earlier ones.
        self._by_session: dict[str, deque[_Pending]] = {}
        self._ready: deque[pb.StepResponse] = deque()
        self._in_flight = 0  # read and not yet written
        self._wake_writer: asyncio.Future[None] | None = None
        self._wake_reader: asyncio.Future[None] | None = None
        self._reading = True
        self._failure: Exception | None = None  # the reader's, or shutdown's

    # --- called by the batcher (through _Pending) -------------------------------------

    def settled(self, pending: _Pending) -> None:
        queue = self._by_session[pending.request.session_id]
        if queue[0] is not pending:
            return  # an earlier step of its session is still running; it releases this one
        while queue and queue[0].response is not None:
            response = queue.popleft().response
            assert response is not None
            self._ready.append(response)
        if not queue:
            del self._by_session[pending.request.session_id]
        self._wake(writer=True)

    def _wake(self, *, writer: bool) -> None:
        waiter = self._wake_writer if writer else self._wake_reader
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self, reason: Exception) -> None:
        """End the stream once its in-flight steps are answered (shutdown)."""
        if self._failure is None:
            self._failure = reason
        self._wake(writer=True)

    # --- the reader task -------------------------------------------------------------

    async def read(self, requests: AsyncIterable[pb.StepRequest]) -> None:
        loop = asyncio.get_running_loop()
        submit = self._sessions.submit_step
        principal = self._principal
        try:
            async for request in requests:
                if isinstance(request, Undecodable):
                    raise errors.InvalidArgument(request.message)
                while self._in_flight >= self._max_in_flight:
                    self._wake_reader = loop.create_future()
                    await self._wake_reader
                pending = _Pending(self, request)
                sid = request.session_id
                queue = self._by_session.get(sid)
                if queue is None:
                    queue = self._by_session[sid] = deque()
                queue.append(pending)
                self._in_flight += 1
                position = request.position if request.HasField("position") else None
                try:
                    submit(sid, request.values, principal, position, pending)
                except Exception as exc:  # refused up front: answered in band, in order
                    pending.set_exception(exc)
        except Exception as exc:  # an undecodable request, or the transport failed
            if self._failure is None:
                self._failure = exc
        finally:
            self._reading = False
            self._wake(writer=True)

    # --- the writer: the RPC's own coroutine ----------------------------------------

    async def serve(self, requests: AsyncIterable[pb.StepRequest]) -> None:
        """Run the call: read in a task, write here, until both sides are done."""
        loop = asyncio.get_running_loop()
        reader = asyncio.create_task(self.read(requests))
        ready = self._ready
        write = self._context.write
        try:
            while True:
                while ready:
                    await write(ready.popleft())
                    self._in_flight -= 1
                    if self._in_flight < self._max_in_flight:
                        self._wake(writer=False)
                if self._in_flight == 0 and (not self._reading or self._failure is not None):
                    break
                if self._failure is not None and not reader.done():
                    reader.cancel()  # read nothing more; answer what was read
                self._wake_writer = loop.create_future()
                await self._wake_writer
            if self._failure is not None:
                code, message = to_status(self._failure)
                await self._context.abort(code, message)
        finally:
            reader.cancel()
            for queue in self._by_session.values():
                for pending in queue:
                    pending.gone = True  # the caller went away: skip what has not run
