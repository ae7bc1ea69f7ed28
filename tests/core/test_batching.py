"""Batching behaviour: failures, ordering, reset/close in flight, queue bounds, shutdown."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from seqserve.core.directory import SLOT
from seqserve.core.errors import (
    FailedPrecondition,
    Internal,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from seqserve.core.runtime import ModelRegistry
from seqserve.core.sessions import SessionManager
from seqserve.core.settings import CoreSettings
from seqserve.store.memory import MemoryDirectory
from tests.core.conftest import PRINCIPAL, Gate, running
from tests.support import ModelZoo, torch_reference

ATOL = 1e-5


def walk(steps: int, features: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(0, 0.3, (steps, features)), axis=0).astype(np.float32)


async def in_flight(gate: Gate, calls: int = 1) -> None:
    """Wait until `calls` more model calls are inside the gate."""
    for _ in range(calls):
        assert await asyncio.to_thread(gate.entered.acquire, timeout=10)


def snapshot(m: SessionManager, model: str) -> list[np.ndarray]:
    slab = m.version(model, "1").slab
    arrays: list[np.ndarray] = [*slab.states, slab.last_output, slab.position]
    return [a.copy() for a in arrays]


def test_failed_batch_fails_its_steps_and_changes_no_state(
    registry: ModelRegistry, zoo: ModelZoo, gate: Callable[[str], Gate]
) -> None:
    g = gate("lstm-ar")
    x = walk(12)

    async def main() -> None:
        async with running(registry) as m:
            ids = [m.create("lstm-ar", None, None, PRINCIPAL).session_id for _ in range(4)]
            g.open.set()
            for sid in ids:
                await m.step(sid, x[:6].ravel(), PRINCIPAL)
            before = snapshot(m, "lstm-ar")
            g.open.clear()
            g.fail_next = 1
            first = asyncio.ensure_future(m.step(ids[0], x[6:8].ravel(), PRINCIPAL))
            await in_flight(g)  # the failing call holds the worker; the rest queue
            rest = [
                asyncio.ensure_future(m.step(sid, x[6:8].ravel(), PRINCIPAL)) for sid in ids[1:]
            ]
            batch = asyncio.ensure_future(
                m.step_batch(ids[1:], [2, 2, 2], np.tile(x[6:8].ravel(), 3), PRINCIPAL)
            )
            await asyncio.sleep(0)
            g.open.set()
            with pytest.raises(
                Internal,
                match=r"model lstm-ar/1: the model call failed "
                r"\(RuntimeError; request id [0-9a-f]{12}",
            ):
                await first
            # Only the call that failed failed; the queued steps then ran normally.
            for sid, task in zip(ids[1:], rest, strict=True):
                assert (await task).position == 8, sid
            assert (await batch).positions == [10, 10, 10]
            after = snapshot(m, "lstm-ar")
            record = m.directory.get(ids[0])
            assert record is not None
            slot0 = record[SLOT]
            for a, b in zip(before, after, strict=True):
                # The failed session's state is exactly as it was.
                np.testing.assert_array_equal(
                    np.take(a, [slot0], axis=1 if a.ndim == 3 else 0),
                    np.take(b, [slot0], axis=1 if b.ndim == 3 else 0),
                )
            # The session goes on from where it was, as if the failed step never happened.
            got = (await m.step(ids[0], x[6:12].ravel(), PRINCIPAL)).outputs
            want = torch_reference(zoo.modules["lstm-ar"], x)[6:]
            np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)

    asyncio.run(main())


def test_failed_batch_path_items_report_internal_and_others_proceed(
    registry: ModelRegistry, zoo: ModelZoo, gate: Callable[[str], Gate]
) -> None:
    g = gate("rnn-ar")
    g.open.set()

    async def main() -> None:
        async with running(registry) as m:
            rnn = [m.create("rnn-ar", None, None, PRINCIPAL).session_id for _ in range(2)]
            lstm = m.create("lstm-ar", None, None, PRINCIPAL).session_id
            g.fail_next = 1
            x = walk(3)
            result = await m.step_batch([rnn[0], lstm, rnn[1]], [1, 1, 1], x.ravel(), PRINCIPAL)
            assert [i for i, _ in result.errors] == [0, 2]
            assert all(isinstance(e, Internal) for _, e in result.errors)
            assert result.output_lengths == [0, 1, 0]
            assert result.positions == [0, 1, 0]
            np.testing.assert_allclose(
                result.outputs, torch_reference(zoo.modules["lstm-ar"], x[1:2]).ravel(), atol=ATOL
            )
            assert m.info(rnn[0], PRINCIPAL).position == 0

    asyncio.run(main())


def test_a_failed_model_call_is_logged_once_and_every_step_reports_its_id(
    registry: ModelRegistry, gate: Callable[[str], Gate], caplog: pytest.LogCaptureFixture
) -> None:
    """One model call, seven steps (four single, three batch items): one ERROR line with
    the traceback, and every step fails with the request id that line names."""
    g = gate("lstm-ar")

    async def main() -> None:
        async with running(registry) as m:
            ids = [m.create("lstm-ar", None, None, PRINCIPAL).session_id for _ in range(7)]
            g.fail_next = 1
            singles = [asyncio.ensure_future(m.step(sid, [0.5], PRINCIPAL)) for sid in ids[:4]]
            batch = asyncio.ensure_future(m.step_batch(ids[4:], None, [1.0, 2.0, 3.0], PRINCIPAL))
            await asyncio.sleep(0)
            g.open.set()
            failed = [e for e in await asyncio.gather(*singles, return_exceptions=True)]
            result = await batch
            assert g.calls == [7]  # all of them in one model call
            failed += [e for _, e in result.errors]
            assert len(failed) == 7 and all(isinstance(e, Internal) for e in failed)
            request_ids = {e.request_id for e in failed if isinstance(e, Internal)}
            assert len(request_ids) == 1
            (rid,) = request_ids
            assert all(f"request id {rid}" in str(e) for e in failed)
            logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(logged) == 1, [r.getMessage() for r in logged]
            assert rid in logged[0].getMessage() and "on 7 rows" in logged[0].getMessage()
            assert logged[0].exc_info is not None
            assert "injected model failure" in str(logged[0].exc_info[1])

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())


def test_steps_of_one_session_apply_in_call_order(
    registry: ModelRegistry, zoo: ModelZoo, gate: Callable[[str], Gate]
) -> None:
    """Pipelined calls (a stream that does not wait) apply one at a time, in order."""
    g = gate("gru-ar")
    x = walk(40, features=2, seed=5)

    async def main() -> None:
        async with running(registry) as m:
            sid = m.create("gru-ar", None, None, PRINCIPAL).session_id
            other = m.create("gru-ar", None, None, PRINCIPAL).session_id
            chunks = np.split(x, [3, 4, 10, 11, 12, 20, 27, 28, 35])
            tasks: list[asyncio.Future[Any]] = []
            for i, c in enumerate(chunks):
                if i % 3 == 2:  # some go by the batch path, beside another session
                    tasks.append(
                        asyncio.ensure_future(
                            m.step_batch(
                                [other, sid],
                                [1, len(c)],
                                np.concatenate([x[i], c.ravel()]),
                                PRINCIPAL,
                            )
                        )
                    )
                else:
                    tasks.append(asyncio.ensure_future(m.step(sid, c.ravel(), PRINCIPAL)))
            await asyncio.sleep(0)
            g.open.set()
            results = await asyncio.gather(*tasks)
            outs = []
            for i, (c, r) in enumerate(zip(chunks, results, strict=True)):
                if i % 3 == 2:
                    assert r.errors == []
                    outs.append(r.outputs[2:].reshape(len(c), 2))
                else:
                    outs.append(r.outputs)
            want = torch_reference(zoo.modules["gru-ar"], x)
            np.testing.assert_allclose(np.concatenate(outs), want, rtol=0, atol=ATOL)
            # Each call was a separate model call for this session: never two in one round.
            assert len(g.calls) >= len(chunks)

    asyncio.run(main())


def test_reset_and_close_while_queued_or_running(
    registry: ModelRegistry, zoo: ModelZoo, gate: Callable[[str], Gate]
) -> None:
    g = gate("lstm-ar")
    x = walk(8)

    async def main() -> None:
        async with running(registry) as m:
            sid = m.create("lstm-ar", None, None, PRINCIPAL).session_id
            gone = m.create("lstm-ar", None, None, PRINCIPAL).session_id
            running_step = asyncio.ensure_future(m.step(sid, x[:2].ravel(), PRINCIPAL))
            await in_flight(g)
            queued_step = asyncio.ensure_future(m.step(sid, x[2:4].ravel(), PRINCIPAL))
            queued_gone = asyncio.ensure_future(m.step(gone, x[:2].ravel(), PRINCIPAL))
            await asyncio.sleep(0)
            assert m.reset(sid, PRINCIPAL).position == 0
            m.close(gone, PRINCIPAL)
            # A new session may get the closed one's slot: the old step must not write it.
            replacement = m.create("lstm-ar", None, None, PRINCIPAL).session_id
            g.open.set()
            with pytest.raises(FailedPrecondition, match="was reset while this step was running"):
                await running_step
            with pytest.raises(FailedPrecondition, match="was reset while this step was queued"):
                await queued_step
            with pytest.raises(NotFound, match="closed or expired while this step was queued"):
                await queued_gone
            # The reset session is exactly fresh; the new one was not written by the old step.
            assert m.info(sid, PRINCIPAL).position == 0
            got = (await m.step(sid, x.ravel(), PRINCIPAL)).outputs
            np.testing.assert_allclose(got, torch_reference(zoo.modules["lstm-ar"], x), atol=ATOL)
            got = (await m.step(replacement, x.ravel(), PRINCIPAL)).outputs
            np.testing.assert_allclose(got, torch_reference(zoo.modules["lstm-ar"], x), atol=ATOL)

    asyncio.run(main())


def test_queue_bound(registry: ModelRegistry, gate: Callable[[str], Gate]) -> None:
    g = gate("lstm-ar")

    async def main() -> None:
        async with running(registry, CoreSettings(max_queue=3)) as m:
            ids = [m.create("lstm-ar", None, None, PRINCIPAL).session_id for _ in range(6)]
            first = asyncio.ensure_future(m.step(ids[0], [1.0], PRINCIPAL))
            await in_flight(g)  # running: not counted as queued
            queued = [asyncio.ensure_future(m.step(s, [1.0], PRINCIPAL)) for s in ids[1:4]]
            await asyncio.sleep(0)
            with pytest.raises(
                ResourceExhausted,
                match="queue full: 3 steps waiting, this request adds 1, max_queue=3",
            ):
                await m.step(ids[4], [1.0], PRINCIPAL)
            with pytest.raises(ResourceExhausted, match="adds 2, max_queue=3"):
                await m.step_batch(ids[4:6], None, [1.0, 2.0], PRINCIPAL)
            assert m.info(ids[4], PRINCIPAL).position == 0
            g.open.set()
            assert [r.position for r in await asyncio.gather(first, *queued)] == [1, 1, 1, 1]

    asyncio.run(main())


def test_stop_drains_in_flight_and_queued_steps(
    registry: ModelRegistry, gate: Callable[[str], Gate]
) -> None:
    g = gate("lstm-ar")

    async def main() -> None:
        m = SessionManager(registry, CoreSettings(), MemoryDirectory)
        await m.start()
        ids = [m.create("lstm-ar", None, None, PRINCIPAL).session_id for _ in range(3)]
        first = asyncio.ensure_future(m.step(ids[0], [1.0], PRINCIPAL))
        await in_flight(g)
        queued = [asyncio.ensure_future(m.step(s, [1.0, 2.0], PRINCIPAL)) for s in ids[1:]]
        await asyncio.sleep(0)
        stopping = asyncio.ensure_future(m.stop(grace_s=10))
        await asyncio.sleep(0)
        with pytest.raises(Unavailable):
            await m.step(ids[0], [1.0], PRINCIPAL)  # refused while draining
        g.open.set()
        await stopping
        assert (await first).position == 1
        assert [(await q).position for q in queued] == [2, 2]

    asyncio.run(main())


def test_stop_fails_what_the_grace_period_cannot_drain(
    registry: ModelRegistry, gate: Callable[[str], Gate]
) -> None:
    g = gate("lstm-ar")

    async def main() -> None:
        m = SessionManager(registry, CoreSettings(), MemoryDirectory)
        await m.start()
        a, b = (m.create("lstm-ar", None, None, PRINCIPAL).session_id for _ in range(2))
        first = asyncio.ensure_future(m.step(a, [1.0], PRINCIPAL))
        await in_flight(g)
        queued = asyncio.ensure_future(m.step(b, [1.0], PRINCIPAL))
        behind = asyncio.ensure_future(m.step(a, [1.0], PRINCIPAL))  # waits for `first`
        await asyncio.sleep(0)
        await m.stop(grace_s=0.05)
        g.open.set()
        for task in (first, queued, behind):
            with pytest.raises(Unavailable, match="shutting down"):
                await task
        assert m.info(a, PRINCIPAL).position == 0

    asyncio.run(main())


def test_small_rounds_run_on_the_loop_and_their_failures_are_contained(
    registry: ModelRegistry, zoo: ModelZoo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single small step runs without the worker hop; a failure there fails only its step."""
    model = registry.get("rnn-ar")
    real = model.run
    failures = [True]

    def flaky(x: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        if failures and failures.pop():
            raise RuntimeError("injected")
        return real(x, states)

    monkeypatch.setattr(model, "run", flaky)
    monkeypatch.setattr(model, "call_s", 0.0)  # every round predicted tiny: inline
    monkeypatch.setattr(model, "row_step_s", 0.0)
    x = walk(6)

    async def main() -> None:
        async with running(registry) as m:
            sid = m.create("rnn-ar", None, None, PRINCIPAL).session_id
            with pytest.raises(Internal, match="request id"):
                await m.step(sid, x[:3].ravel(), PRINCIPAL)
            got = (await m.step(sid, x.ravel(), PRINCIPAL)).outputs
            np.testing.assert_allclose(got, torch_reference(zoo.modules["rnn-ar"], x), atol=ATOL)
            batcher = next(b for b in m.batchers() if b.model is model)
            assert (batcher.rounds, batcher.offloaded) == (2, 0)

    asyncio.run(main())


def test_batch_delay_gathers_more_per_round(registry: ModelRegistry, zoo: ModelZoo) -> None:
    x = walk(10, features=2, seed=8)

    async def main() -> None:
        async with running(registry, CoreSettings(batch_delay_us=2000)) as m:
            ids = [m.create("gru-ar", None, None, PRINCIPAL).session_id for _ in range(20)]

            async def drive(sid: str) -> np.ndarray:
                outs = [(await m.step(sid, row, PRINCIPAL)).outputs for row in x]
                return np.concatenate(outs)

            results = await asyncio.gather(*(drive(s) for s in ids))
            want = torch_reference(zoo.modules["gru-ar"], x)
            for got in results:
                np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
            batcher = next(b for b in m.batchers() if b.model.name == "gru-ar")
            assert batcher.rows == 200
            assert batcher.rounds <= 20  # all 20 sessions' steps share rounds

    asyncio.run(main())


def test_a_deep_pipeline_of_one_session_keeps_its_order(
    registry: ModelRegistry, zoo: ModelZoo
) -> None:
    x = walk(400, seed=4)
    other_x = walk(400, seed=6)

    async def main() -> None:
        async with running(registry) as m:
            sid = m.create("lstm-ar", None, None, PRINCIPAL).session_id
            other = m.create("lstm-ar", None, None, PRINCIPAL).session_id
            # Every step submitted before any runs; two sessions interleaved.
            mine = [asyncio.ensure_future(m.step(sid, row, PRINCIPAL)) for row in x]
            theirs = [asyncio.ensure_future(m.step(other, row, PRINCIPAL)) for row in other_x]
            got = np.concatenate([r.outputs for r in await asyncio.gather(*mine)])
            got_other = np.concatenate([r.outputs for r in await asyncio.gather(*theirs)])
            module = zoo.modules["lstm-ar"]
            np.testing.assert_allclose(got, torch_reference(module, x), rtol=0, atol=ATOL)
            np.testing.assert_allclose(
                got_other, torch_reference(module, other_x), rtol=0, atol=ATOL
            )
            assert [r.position for r in (await asyncio.gather(*mine))][-3:] == [398, 399, 400]

    asyncio.run(main())


def test_the_next_round_is_gathered_while_one_runs(
    registry: ModelRegistry, zoo: ModelZoo, gate: Callable[[str], Gate]
) -> None:
    """While a round holds the worker, steps of other sessions are gathered into a
    second round queued behind it (not a third: at most two are handed over)."""
    g = gate("lstm-ar")
    x = walk(4, seed=9)
    tiled = np.tile(x.ravel(), 2)

    async def main() -> None:
        async with running(registry) as m:
            batcher = next(b for b in m.batchers() if b.model.name == "lstm-ar")
            ids = [m.create("lstm-ar", None, None, PRINCIPAL).session_id for _ in range(5)]
            first = asyncio.ensure_future(m.step(ids[0], x.ravel(), PRINCIPAL))
            await in_flight(g)  # round 1 holds the worker
            second = asyncio.ensure_future(m.step_batch(ids[1:3], [4, 4], tiled, PRINCIPAL))
            await settle_loop()
            assert batcher.handed_over == 2  # round 2 gathered and handed over
            third = asyncio.ensure_future(m.step_batch(ids[3:], [4, 4], tiled, PRINCIPAL))
            await settle_loop()
            assert batcher.handed_over == 2  # round 3 waits to be gathered
            g.open.set()
            one, *batches = await asyncio.gather(first, second, third)
            want = torch_reference(zoo.modules["lstm-ar"], x)[:, 0]  # (T,)
            np.testing.assert_allclose(one.outputs[:, 0], want, rtol=0, atol=ATOL)
            for batch in batches:
                assert batch.positions == [4, 4] and not batch.errors
                np.testing.assert_allclose(
                    batch.outputs.reshape(2, 4), np.tile(want, (2, 1)), rtol=0, atol=ATOL
                )
            assert g.calls == [1, 2, 2]  # one call per round

    asyncio.run(main())


async def settle_loop() -> None:
    """Let the loop run what the last call made ready (no thread involved)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def chain_two(
    m: SessionManager, g: Gate, first_x: np.ndarray, then_x: np.ndarray, position: int | None = None
) -> tuple[str, asyncio.Future[Any], asyncio.Future[Any]]:
    """A new session's step held in the worker by `g`, and its next step submitted behind it."""
    sid = m.create("lstm-ar", None, None, PRINCIPAL).session_id
    first = asyncio.ensure_future(m.step(sid, first_x.ravel(), PRINCIPAL))
    await in_flight(g)
    then = asyncio.ensure_future(m.step(sid, then_x.ravel(), PRINCIPAL, position=position))
    await settle_loop()
    return sid, first, then


def test_a_sessions_next_step_is_chained_behind_its_running_one(
    registry: ModelRegistry, zoo: ModelZoo, gate: Callable[[str], Gate]
) -> None:
    """The next step of a session whose step is in the worker is handed over at
    once, to run from the state that step makes."""
    g = gate("lstm-ar")
    x = walk(12, seed=10)

    async def main() -> None:
        async with running(registry) as m:
            batcher = next(b for b in m.batchers() if b.model.name == "lstm-ar")
            sid, first, then = await chain_two(m, g, x[:4], x[4:8], position=4)
            assert batcher.handed_over == 2  # chained, not waiting for its turn
            g.open.set()
            a, b = await asyncio.gather(first, then)
            last = await m.step(sid, x[8:].ravel(), PRINCIPAL)  # committed state carries on
            assert (a.position, b.position, last.position) == (4, 8, 12)
            got = np.concatenate([a.outputs, b.outputs, last.outputs])
            want = torch_reference(zoo.modules["lstm-ar"], x)
            np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
            assert g.calls == [1, 1, 1]

    asyncio.run(main())


def test_a_chained_step_runs_again_when_the_step_before_it_fails(
    registry: ModelRegistry, zoo: ModelZoo, gate: Callable[[str], Gate]
) -> None:
    g = gate("lstm-ar")
    x = walk(8, seed=11)

    async def main() -> None:
        async with running(registry) as m:
            g.fail_next = 1
            _, first, then = await chain_two(m, g, x[:4], x[4:])
            g.open.set()
            with pytest.raises(Internal, match="the model call failed"):
                await first
            # The failed step changed nothing, so its successor starts from zero state.
            result = await then
            assert result.position == 4
            want = torch_reference(zoo.modules["lstm-ar"], x[4:])
            np.testing.assert_allclose(result.outputs, want, rtol=0, atol=ATOL)
            assert g.calls == [1, 1]  # the failed call, then the successor run again

    asyncio.run(main())


def test_a_reset_fails_a_running_step_and_the_step_chained_to_it(
    registry: ModelRegistry, zoo: ModelZoo, gate: Callable[[str], Gate]
) -> None:
    g = gate("lstm-ar")
    x = walk(8, seed=12)

    async def main() -> None:
        async with running(registry) as m:
            sid, first, then = await chain_two(m, g, x[:4], x[4:])
            m.reset(sid, PRINCIPAL)
            g.open.set()
            for step in (first, then):
                with pytest.raises(FailedPrecondition, match="was reset while this step"):
                    await step
            assert m.info(sid, PRINCIPAL).position == 0
            after = await m.step(sid, x[:4].ravel(), PRINCIPAL)
            want = torch_reference(zoo.modules["lstm-ar"], x[:4])
            np.testing.assert_allclose(after.outputs, want, rtol=0, atol=ATOL)

    asyncio.run(main())


def test_chained_steps_sent_back_run_again_in_their_order(
    registry: ModelRegistry, zoo: ModelZoo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step chained behind one that is itself sent back to run again must wait
    for that one's second run, not overtake it."""
    model = registry.get("lstm-ar")
    real = model.run
    opened = [threading.Event() for _ in range(3)]  # the first three calls wait on these
    entered = threading.Semaphore(0)
    calls: list[int] = []

    def gated(x: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        k = len(calls)
        calls.append(x.shape[1])
        entered.release()
        if k < len(opened):
            assert opened[k].wait(timeout=30)
        return real(x, states)

    monkeypatch.setattr(model, "run", gated)
    monkeypatch.setattr(model, "call_s", 1.0)  # every round to the worker
    x = walk(12, seed=13)

    async def reached(n: int) -> None:
        for _ in range(n):
            assert await asyncio.to_thread(entered.acquire, timeout=10)

    async def main() -> None:
        async with running(registry) as m:
            sid = m.create("lstm-ar", None, None, PRINCIPAL).session_id
            s1 = asyncio.ensure_future(m.step(sid, x[:4].ravel(), PRINCIPAL))
            await reached(1)
            m.reset(sid, PRINCIPAL)  # s1 will not be committed
            s2 = asyncio.ensure_future(m.step(sid, x[4:8].ravel(), PRINCIPAL))
            await settle_loop()  # s2 chained behind s1, from the state s1 makes
            opened[0].set()
            with pytest.raises(FailedPrecondition, match="was reset while this step"):
                await s1
            await reached(1)  # s2's chained call holds the worker
            s3 = asyncio.ensure_future(m.step(sid, x[8:].ravel(), PRINCIPAL))
            await settle_loop()  # s3 chained behind s2
            opened[1].set()  # s2 returns uncommitted-from: sent back, runs again
            await reached(1)  # s3's chained call
            await settle_loop()
            opened[2].set()  # s3 returns: it too is sent back, and must wait for s2
            a, b = await asyncio.gather(s2, s3)
            assert (a.position, b.position) == (4, 8)
            want = torch_reference(zoo.modules["lstm-ar"], x[4:])  # from the reset state
            np.testing.assert_allclose(
                np.concatenate([a.outputs, b.outputs]), want, rtol=0, atol=ATOL
            )

    asyncio.run(main())
