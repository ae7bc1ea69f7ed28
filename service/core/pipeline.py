"""The step pipeline: one caller's stream of steps in, answers out, in each session's order.

Transport-neutral: a front end gives it the requests as they arrive, a
function that turns one into a typed `Step`, one that turns an `Answer` into
its response and one that writes a response; the pipeline reads in a task and
writes in the caller's coroutine until both sides are done. It knows no
protocol: the native StepStream (seqserve.grpc.streams) is such a front end,
and any other stream protocol over the same core is another.

- Each step is submitted to the core as it is read; the batcher settles its
  `Answer` inside its round (no task, future or queue per step: a step costs
  three loop wake-ups, reader, batcher, writer). The answer holds only typed
  values; the front end encodes it in its writer, outside the round.
- Order: answers of one session leave in the order its steps were read, even
  when a step is refused up front while an earlier one of that session is
  still running (the core's own per-session order, seqserve.core.work.Order,
  covers only the steps it queued); answers of different sessions leave as
  they are ready.
- Bound: at most `max_in_flight` steps are read but not yet written; then the
  reader stops reading, so the transport's flow control pushes back on the
  client.
- A request that cannot be decoded (decode raises) ends reading: the steps
  read before it are answered, then `run` returns the error for the front
  end to report, as it does for a transport failure or `close`. A front end
  whose protocol answers a bad request in band and reads on instead returns
  an `Answered` from decode: it is answered in its key's order, without the
  core.
- decode may return a coroutine instead, for a request that also opens or
  ends a session (the KServe front end's START): the reader awaits it, so
  what it does happens before any later request is read. Plain steps stay
  plain calls.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar, cast

from seqserve.core.work import F32, StepResult

if TYPE_CHECKING:
    from seqserve.core.sessions import SessionManager

Request = TypeVar("Request")
Response = TypeVar("Response")
Tag = TypeVar("Tag")

# One request of T steps for one session, as the core takes it: (session id,
# values (T * F,) time-major and handed over to the core, the position the
# client expects the session at or None, the caller's tag returned with the
# answer). A plain tuple: a NamedTuple costs a Python call per step.
Step = tuple[str, F32, int | None, Tag]


class Answered(NamedTuple, Generic[Tag]):
    """A request the front end answered itself (a refusal, or a result it computed), to be
    written in the order of `key`'s requests like a step of that session."""

    key: str
    tag: Tag
    result: StepResult | None
    error: BaseException | None


# What a front end turns a request into: a step for the core, or its own answer, or a
# coroutine that gives one of those (see the module's docstring).
Decode = Callable[
    [Request], "Step[Tag] | Answered[Tag] | Coroutine[Any, Any, Step[Tag] | Answered[Tag]]"
]


class Answer(Generic[Tag]):
    """A step read and not yet written: the reply the batcher settles, then the answer.

    Exactly one of `result` and `error` is set once it is settled.
    """

    __slots__ = ("error", "gone", "pipeline", "result", "session_id", "tag")

    def __init__(self, pipeline: StepPipeline[Tag], session_id: str, tag: Tag) -> None:
        self.pipeline = pipeline
        self.session_id = session_id
        self.tag = tag
        self.result: StepResult | None = None
        self.error: BaseException | None = None
        self.gone = False  # the stream ended: the batcher skips the step if not yet run

    def done(self) -> bool:
        return self.gone or self.result is not None or self.error is not None

    def set_result(self, result: StepResult, /) -> None:
        self.result = result
        self.pipeline._settled(self)

    def set_exception(self, exception: BaseException, /) -> None:
        self.error = exception
        self.pipeline._settled(self)


class StepPipeline(Generic[Tag]):
    """The state of one stream: what is in flight, what is ready to write."""

    def __init__(self, sessions: SessionManager, principal: str, max_in_flight: int) -> None:
        self._sessions = sessions
        self._principal = principal
        self._max_in_flight = max_in_flight
        # Per session, its steps in read order; a settled step waits here for earlier ones.
        self._by_session: dict[str, deque[Answer[Tag]]] = {}
        self._ready: deque[Answer[Tag]] = deque()
        self._in_flight = 0  # read and not yet written
        self._wake_writer: asyncio.Future[None] | None = None
        self._wake_reader: asyncio.Future[None] | None = None
        self._reading = True
        self._failure: Exception | None = None  # the reader's, or close()'s

    def submit(self, sid: str, values: F32, position: int | None, tag: Tag) -> None:
        """Hand one step to the core; its answer (or its refusal) comes in its session's order."""
        answer = Answer(self, sid, tag)
        queue = self._by_session.get(sid)
        if queue is None:
            queue = self._by_session[sid] = deque()
        queue.append(answer)
        self._in_flight += 1
        try:
            self._sessions.submit_step(sid, values, self._principal, position, answer)
        except Exception as exc:  # refused up front: answered in band, in order
            answer.set_exception(exc)

    def _refuse(self, sid: str, tag: Tag, exc: BaseException) -> None:
        """Answer a step in its session's order with a refusal, without the core."""
        self._answer(Answered(sid, tag, None, exc))

    def _answer(self, answered: Answered[Tag]) -> None:
        """Write what the front end answered, in its key's order, without the core."""
        answer = Answer(self, answered.key, answered.tag)
        self._by_session.setdefault(answered.key, deque()).append(answer)
        self._in_flight += 1
        if answered.result is not None:
            answer.set_result(answered.result)
        else:
            assert answered.error is not None
            answer.set_exception(answered.error)

    def close(self, reason: Exception) -> None:
        """End the stream once its in-flight steps are answered (shutdown)."""
        if self._failure is None:
            self._failure = reason
        self._wake(writer=True)

    # --- called by the batcher, through Answer ----------------------------------------

    def _settled(self, answer: Answer[Tag]) -> None:
        queue = self._by_session[answer.session_id]
        if queue[0] is not answer:
            return  # an earlier step of its session is still running; it releases this one
        while queue and (queue[0].result is not None or queue[0].error is not None):
            self._ready.append(queue.popleft())
        if not queue:
            del self._by_session[answer.session_id]
        self._wake(writer=True)

    def _wake(self, *, writer: bool) -> None:
        waiter = self._wake_writer if writer else self._wake_reader
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- the reader task --------------------------------------------------------------

    async def _read(self, requests: AsyncIterable[Request], decode: Decode[Request, Tag]) -> None:
        loop = asyncio.get_running_loop()
        submit = self.submit
        sharing = self._sessions.sharing
        try:
            async for request in requests:
                step = decode(request)
                if inspect.iscoroutine(step):
                    step = await step
                while self._in_flight >= self._max_in_flight:
                    self._wake_reader = loop.create_future()
                    await self._wake_reader
                if isinstance(step, Answered):
                    self._answer(cast("Answered[Tag]", step))
                    continue
                sid, values, position, tag = cast("Step[Tag]", step)
                if sharing is not None and sharing.stale(sid, position):
                    # Loaded before it is submitted: reading waits, so order is kept.
                    try:
                        await self._sessions.ensure(sid, position)
                    except Exception as exc:
                        self._refuse(sid, tag, exc)
                        continue
                submit(sid, values, position, tag)
        except Exception as exc:  # an undecodable request, or the transport failed
            if self._failure is None:
                self._failure = exc
        finally:
            self._reading = False
            self._wake(writer=True)

    # --- the writer: the caller's own coroutine -------------------------------------

    async def run(
        self,
        requests: AsyncIterable[Request],
        decode: Decode[Request, Tag],
        encode: Callable[[Answer[Tag]], Response],
        write: Callable[[Response], Awaitable[object]],
    ) -> Exception | None:
        """Read in a task, write here, until both sides are done; why reading ended early."""
        loop = asyncio.get_running_loop()
        reader = asyncio.create_task(self._read(requests, decode))
        ready = self._ready
        try:
            while True:
                while ready:
                    await write(encode(ready.popleft()))
                    self._in_flight -= 1
                    if self._in_flight < self._max_in_flight:
                        self._wake(writer=False)
                if self._in_flight == 0 and (not self._reading or self._failure is not None):
                    break
                if self._failure is not None and not reader.done():
                    reader.cancel()  # read nothing more; answer what was read
                self._wake_writer = loop.create_future()
                await self._wake_writer
            return self._failure
        finally:
            reader.cancel()
            for queue in self._by_session.values():
                for answer in queue:
                    answer.gone = True  # the caller went away: skip what has not run
