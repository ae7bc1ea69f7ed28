"""The step pipeline, in process: per-session answer order, the in-flight bound, early ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from seqserve.core.errors import InvalidArgument, NotFound, Unavailable
from seqserve.core.pipeline import Answer, Step, StepPipeline
from seqserve.core.runtime import ModelRegistry
from seqserve.core.sessions import SessionManager
from tests.core.conftest import PRINCIPAL, Gate, running
from tests.support import ModelZoo, torch_reference

ATOL = 1e-5
MODEL = "lstm-ar"  # one input


def steps_of(x: np.ndarray) -> list[np.ndarray]:
    """One request per row of x (N, F): values (F,) each."""
    return [np.ascontiguousarray(row, np.float32) for row in x]


def walk(n: int, seed: int) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).normal(0, 0.3, (n, 1)), axis=0).astype(np.float32)


class Collect:
    """The front end's writer: keeps every answer written, optionally held until released."""

    def __init__(self, held: bool = False) -> None:
        self.answers: list[Answer[int]] = []
        self.release = asyncio.Event()
        if not held:
            self.release.set()

    async def __call__(self, answer: Answer[int]) -> None:
        await self.release.wait()
        self.answers.append(answer)

    def of(self, session_id: str) -> list[Answer[int]]:
        return [a for a in self.answers if a.session_id == session_id]


def identity(step: Step[int]) -> Step[int]:
    return step


def as_is(answer: Answer[int]) -> Answer[int]:
    return answer


def test_answers_keep_each_sessions_order_with_up_front_refusals_and_tags(
    registry: ModelRegistry, zoo: ModelZoo, gate: Callable[[str], Gate]
) -> None:
    """A refusal of a's second step must not overtake a's first, still in the model."""
    g = gate(MODEL)
    xa, xb = walk(3, seed=1), walk(2, seed=2)

    async def main() -> None:
        async with running(registry) as m:
            a = m.create(MODEL, None, None, PRINCIPAL).session_id
            b = m.create(MODEL, None, None, PRINCIPAL).session_id

            async def requests() -> AsyncIterator[Step[int]]:
                yield (a, xa[0], None, 0)
                assert await asyncio.to_thread(g.entered.acquire, timeout=10)  # a's step runs
                yield (a, np.array([np.nan], np.float32), None, 1)  # refused: not finite
                yield (b, xb[0], None, 2)
                yield ("ghost", xb[0], None, 3)  # refused: unknown
                yield (a, xa[1], 1, 4)  # with the position it expects
                yield (b, xb[1], 5, 5)  # a wrong position: refused when its turn comes
                yield (a, xa[2], None, 6)
                g.open.set()

            write = Collect()
            failure = await StepPipeline(m, PRINCIPAL, 64).run(requests(), identity, as_is, write)
            assert failure is None
            assert len(write.answers) == 7
            assert [w.tag for w in write.of(a)] == [0, 1, 4, 6]
            assert [w.tag for w in write.of(b)] == [2, 5]
            by_tag = {w.tag: w for w in write.answers}
            assert isinstance(by_tag[1].error, InvalidArgument)
            assert isinstance(by_tag[3].error, NotFound)
            assert "expected position 1, got 5" in str(by_tag[5].error)
            got_a = np.concatenate([by_tag[t].result.outputs for t in (0, 4, 6)])  # type: ignore[union-attr]
            np.testing.assert_allclose(got_a, torch_reference(zoo.modules[MODEL], xa), atol=ATOL)
            got_b = by_tag[2].result.outputs  # type: ignore[union-attr]
            np.testing.assert_allclose(
                got_b, torch_reference(zoo.modules[MODEL], xb[:1]), atol=ATOL
            )
            assert m.info(b, PRINCIPAL).position == 1

    asyncio.run(main())


def test_the_reader_stops_at_the_in_flight_bound(registry: ModelRegistry, zoo: ModelZoo) -> None:
    x = walk(40, seed=3)
    bound = 5

    async def main() -> None:
        async with running(registry) as m:
            sid = m.create(MODEL, None, None, PRINCIPAL).session_id
            pulled = 0

            async def requests() -> AsyncIterator[Step[int]]:
                nonlocal pulled
                for i, values in enumerate(steps_of(x)):
                    pulled += 1
                    yield (sid, values, None, i)

            write = Collect(held=True)
            run = asyncio.ensure_future(
                StepPipeline(m, PRINCIPAL, bound).run(requests(), identity, as_is, write)
            )
            for _ in range(200):  # long enough for every step read so far to be answered
                await asyncio.sleep(0.001)
            # `bound` read and unanswered, and one more decoded that waits for room.
            assert pulled == bound + 1
            assert m.info(sid, PRINCIPAL).position == bound
            write.release.set()
            assert await run is None
            assert [w.tag for w in write.answers] == list(range(len(x)))
            got = np.concatenate([w.result.outputs for w in write.answers])  # type: ignore[union-attr]
            np.testing.assert_allclose(got, torch_reference(zoo.modules[MODEL], x), atol=ATOL)

    asyncio.run(main())


def test_a_request_that_cannot_be_decoded_ends_reading_after_the_steps_before_it(
    registry: ModelRegistry,
) -> None:
    x = walk(6, seed=4)

    async def main() -> None:
        async with running(registry) as m:
            sid = m.create(MODEL, None, None, PRINCIPAL).session_id
            bad = InvalidArgument("expected a StepRequest, got 3 bytes that do not parse")

            def decode(request: object) -> Step[int]:
                if request == "garbage":
                    raise bad
                assert isinstance(request, int)
                return (sid, x[request], None, request)

            async def requests() -> AsyncIterator[object]:
                for item in (0, 1, 2, "garbage", 3, 4):
                    yield item

            write = Collect()
            failure = await StepPipeline(m, PRINCIPAL, 64).run(requests(), decode, as_is, write)
            assert failure is bad
            assert [w.tag for w in write.answers] == [0, 1, 2]
            assert m.info(sid, PRINCIPAL).position == 3

    asyncio.run(main())


def test_close_ends_a_stream_once_what_it_read_is_answered(registry: ModelRegistry) -> None:
    x = walk(4, seed=5)

    async def main() -> None:
        async with running(registry) as m:
            sid = m.create(MODEL, None, None, PRINCIPAL).session_id
            pipeline: StepPipeline[int] = StepPipeline(m, PRINCIPAL, 64)
            forever = asyncio.Event()

            async def requests() -> AsyncIterator[Step[int]]:
                for i, values in enumerate(steps_of(x)):
                    yield (sid, values, None, i)
                await forever.wait()  # a client that keeps its stream open
                yield (sid, x[0], None, 99)

            write = Collect()
            run = asyncio.ensure_future(pipeline.run(requests(), identity, as_is, write))
            while len(write.answers) < len(x):
                await asyncio.sleep(0.001)
            pipeline.close(Unavailable("server shutting down"))
            failure = await asyncio.wait_for(run, 10)
            assert isinstance(failure, Unavailable)
            assert [w.tag for w in write.answers] == [0, 1, 2, 3]

    asyncio.run(main())


def test_steps_not_yet_run_are_skipped_when_the_caller_goes_away(
    registry: ModelRegistry, gate: Callable[[str], Gate]
) -> None:
    """The writer fails (the client vanished): what has not reached the model is not applied."""
    g = gate(MODEL)
    x = walk(6, seed=6)

    async def main() -> None:
        async with running(registry) as m:
            sid = m.create(MODEL, None, None, PRINCIPAL).session_id

            async def requests() -> AsyncIterator[Step[int]]:
                for i, values in enumerate(steps_of(x)):
                    yield (sid, values, None, i)

            async def vanish(answer: Answer[int]) -> None:
                raise ConnectionResetError("the client went away")

            run = asyncio.ensure_future(
                StepPipeline(m, PRINCIPAL, 64).run(requests(), identity, as_is, vanish)
            )
            assert await asyncio.to_thread(g.entered.acquire, timeout=10)  # step 0 in the model
            await asyncio.sleep(0.01)  # the rest read and queued behind it
            g.open.set()
            with pytest.raises(ConnectionResetError):
                await run
            await settle(m)
            # Step 0 was in the model: applied. A step chained behind it in the worker
            # may have run too; everything else was skipped.
            assert m.info(sid, PRINCIPAL).position in (1, 2)

    asyncio.run(main())


async def settle(m: SessionManager) -> None:
    for _ in range(50):
        await asyncio.sleep(0.002)
