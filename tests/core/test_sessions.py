"""Session lifecycle, ids, ownership, idle eviction, limits and input validation."""

from __future__ import annotations

import asyncio
import gc
import re
from collections.abc import Callable

import numpy as np
import pytest

from seqserve.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from seqserve.core.runtime import ModelRegistry
from seqserve.core.sessions import SessionInfo, SessionManager
from seqserve.core.settings import CoreSettings
from seqserve.store.memory import MemoryDirectory
from tests.core.conftest import PRINCIPAL, FakeClock, running
from tests.support import ModelZoo, torch_reference

ATOL = 1e-5


def values(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, n).astype(np.float32)


def test_create_mints_unguessable_ids_and_reports_info(
    registry: ModelRegistry, clock: FakeClock
) -> None:
    async def main() -> None:
        async with running(registry, clock=clock) as m:
            infos = [m.create("lstm-ar", None, None, PRINCIPAL) for _ in range(50)]
            ids = {i.session_id for i in infos}
            assert len(ids) == 50
            assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)  # 128 bits, hex
            info = infos[0]
            assert (info.model, info.version, info.position) == ("lstm-ar", "1", 0)
            assert info.ttl_seconds == CoreSettings().session_ttl_s
            await m.step(info.session_id, values(3), PRINCIPAL)
            clock.advance(2.5)
            later = m.info(info.session_id, PRINCIPAL)
            assert later.position == 3
            assert later.idle_seconds == pytest.approx(2.5)
            # An empty id is "mint one", as on the wire.
            assert len(m.create("gru-ar", "", "", PRINCIPAL).session_id) == 32
            assert m.session_count == 51

    asyncio.run(main())


def test_client_chosen_ids(registry: ModelRegistry) -> None:
    async def main() -> None:
        async with running(registry) as m:
            assert m.create("rnn-ar", "1", "sensor-17", PRINCIPAL).session_id == "sensor-17"
            with pytest.raises(AlreadyExists, match="'sensor-17' already exists"):
                m.create("lstm-ar", None, "sensor-17", PRINCIPAL)
            # Ids are one namespace: another principal cannot take it either.
            with pytest.raises(AlreadyExists):
                m.create("lstm-ar", None, "sensor-17", "someone-else")
            with pytest.raises(InvalidArgument, match="at most 128 characters, got 129"):
                m.create("lstm-ar", None, "x" * 129, PRINCIPAL)
            with pytest.raises(InvalidArgument, match="printable"):
                m.create("lstm-ar", None, "bad\nid", PRINCIPAL)
            assert m.create("lstm-ar", None, "y" * 128, PRINCIPAL).session_id == "y" * 128

    asyncio.run(main())


def test_unknown_model_and_version(registry: ModelRegistry) -> None:
    async def main() -> None:
        async with running(registry) as m:
            with pytest.raises(NotFound, match=r"unknown model 'nope'; available: \['gru-ar'"):
                m.create("nope", None, None, PRINCIPAL)
            with pytest.raises(NotFound, match=r"'lstm-ar' has no version '9'; available: \['1'\]"):
                m.create("lstm-ar", "9", None, PRINCIPAL)

    asyncio.run(main())


def test_other_principals_see_nothing(registry: ModelRegistry) -> None:
    async def main() -> None:
        async with running(registry) as m:
            sid = m.create("lstm-ar", None, None, "alice").session_id
            calls: list[Callable[[], SessionInfo]] = [
                lambda: m.info(sid, "bob"),
                lambda: m.reset(sid, "bob"),
                lambda: m.close(sid, "bob"),
            ]
            for call in calls:
                with pytest.raises(NotFound, match="unknown session"):
                    call()
            with pytest.raises(NotFound, match="unknown session"):
                await m.step(sid, values(1), "bob")
            with pytest.raises(NotFound, match="unknown session"):
                await m.forecast(sid, 2, "bob")
            result = await m.step_batch([sid], None, values(1), "bob")
            assert [(i, type(e)) for i, e in result.errors] == [(0, NotFound)]
            # Mixed with bob's own: his proceeds, hers is unknown to him.
            own = m.create("lstm-ar", None, None, "bob").session_id
            result = await m.step_batch([own, sid], None, values(2), "bob")
            assert [(i, type(e)) for i, e in result.errors] == [(1, NotFound)]
            assert result.positions == [1, 0]
            # Nothing bob did touched alice's session.
            assert m.info(sid, "alice").position == 0
            assert (await m.step(sid, values(1), "alice")).position == 1

    asyncio.run(main())


def test_reset_and_close(registry: ModelRegistry, zoo: ModelZoo) -> None:
    x = values(30, seed=3).reshape(30, 1)

    async def main() -> None:
        async with running(registry) as m:
            sid = m.create("lstm-ar", None, None, PRINCIPAL).session_id
            await m.step(sid, x[:10].ravel(), PRINCIPAL)
            info = m.reset(sid, PRINCIPAL)
            assert info.position == 0
            # After a reset the session runs as if new: outputs equal a fresh forward.
            got = (await m.step(sid, x[10:].ravel(), PRINCIPAL)).outputs
            np.testing.assert_allclose(
                got, torch_reference(zoo.modules["lstm-ar"], x[10:]), rtol=0, atol=ATOL
            )
            closed = m.close(sid, PRINCIPAL)
            assert (closed.session_id, closed.position) == (sid, 20)
            assert m.session_count == 0
            with pytest.raises(NotFound, match="unknown session"):
                m.info(sid, PRINCIPAL)
            with pytest.raises(NotFound):
                await m.step(sid, values(1), PRINCIPAL)
            with pytest.raises(NotFound):
                m.close(sid, PRINCIPAL)
            # The id is free again.
            assert m.create("gru-ar", None, sid, PRINCIPAL).position == 0

    asyncio.run(main())


def test_idle_sessions_expire_lazily_and_by_sweep(
    registry: ModelRegistry, clock: FakeClock
) -> None:
    settings = CoreSettings(session_ttl_s=60)

    async def main() -> None:
        async with running(registry, settings, clock) as m:
            idle = m.create("lstm-ar", None, "idle", PRINCIPAL).session_id
            busy = m.create("lstm-ar", None, "busy", PRINCIPAL).session_id
            swept = m.create("gru-ar", None, "swept", PRINCIPAL).session_id
            clock.advance(40)
            await m.step(busy, values(1), PRINCIPAL)  # a step counts as activity
            m.info(swept, PRINCIPAL)  # looking does not
            clock.advance(30)  # idle and swept: 70 s idle; busy: 30 s
            assert m.info(busy, PRINCIPAL).position == 1
            with pytest.raises(NotFound, match="'idle' expired after 60 s idle"):
                await m.step(idle, values(1), PRINCIPAL)
            assert m.sweep() == 1  # "swept"; "idle" went already
            assert m.evicted == 2
            with pytest.raises(NotFound, match="unknown session 'swept'"):
                m.info(swept, PRINCIPAL)
            assert m.session_count == 1
            # An expired id can be created again.
            assert m.create("lstm-ar", None, idle, PRINCIPAL).position == 0
            # The batch path expires lazily too, item by item.
            clock.advance(61)
            fresh = m.create("lstm-ar", None, None, PRINCIPAL).session_id
            result = await m.step_batch([idle, fresh], None, values(2), PRINCIPAL)
            assert [(i, type(e)) for i, e in result.errors] == [(0, NotFound)]
            assert result.positions == [0, 1]
            assert m.evicted == 3

    asyncio.run(main())


def test_the_sweeper_runs_by_itself(registry: ModelRegistry, clock: FakeClock) -> None:
    async def main() -> None:
        m = SessionManager(
            registry,
            CoreSettings(session_ttl_s=60),
            MemoryDirectory,
            clock=clock,
            sweep_interval_s=0.01,
        )
        await m.start()
        try:
            m.create("lstm-ar", None, "old", PRINCIPAL)
            clock.advance(61)
            for _ in range(500):  # the sweeper wakes every 10 ms
                if m.session_count == 0:
                    break
                await asyncio.sleep(0.01)
            assert m.session_count == 0
            assert m.evicted == 1
        finally:
            await m.stop(grace_s=1)

    asyncio.run(main())


def test_idle_session_records_are_not_tracked_by_the_gc(registry: ModelRegistry) -> None:
    """A million idle sessions must not lengthen garbage-collection pauses."""

    async def main() -> None:
        async with running(registry) as m:
            sid = m.create("lstm-ar", None, None, PRINCIPAL).session_id
            await m.step(sid, values(1), PRINCIPAL)
            gc.collect()
            assert not gc.is_tracked(m.directory.get(sid))

    asyncio.run(main())


def test_session_cap(registry: ModelRegistry, clock: FakeClock) -> None:
    settings = CoreSettings(max_sessions=3, session_ttl_s=10)

    async def main() -> None:
        async with running(registry, settings, clock) as m:
            first = m.create("lstm-ar", None, None, PRINCIPAL).session_id
            for _ in range(2):
                m.create("gru-ar", None, None, PRINCIPAL)
            with pytest.raises(ResourceExhausted, match="3 open, max_sessions=3"):
                m.create("lstm-ar", None, None, PRINCIPAL)
            m.close(first, PRINCIPAL)
            m.create("lstm-ar", None, None, PRINCIPAL)
            # At the cap, idle sessions are evicted to make room.
            clock.advance(11)
            m.create("lstm-ar", None, None, PRINCIPAL)
            assert m.session_count == 1

    asyncio.run(main())


def test_step_input_validation(registry: ModelRegistry) -> None:
    settings = CoreSettings(max_steps_per_request=8)

    async def main() -> None:
        async with running(registry, settings) as m:
            sid = m.create("lstm-wide", None, None, PRINCIPAL).session_id  # input_size 3
            cases = [
                (values(7), r"multiple of input_size=3 values \(T\*3, T >= 1\), got 7"),
                (values(0), r"multiple of input_size=3 values .*got 0"),
                (values(27), r"at most max_steps_per_request=8 steps, got T=9 \(27 values\)"),
                (
                    np.array([1, 2, 3, 4, np.nan, 6], np.float32),
                    r"got nan at index 4 \(step 1, feature 1\)",
                ),
                (np.array([np.inf, 0, 0], np.float32), r"got inf at index 0"),
            ]
            for bad, message in cases:
                with pytest.raises(InvalidArgument, match=message):
                    await m.step(sid, bad, PRINCIPAL)
            with pytest.raises(InvalidArgument, match="expected position >= 0, got -1"):
                await m.step(sid, values(3), PRINCIPAL, position=-1)
            assert m.info(sid, PRINCIPAL).position == 0  # nothing was applied
            assert (await m.step(sid, values(24), PRINCIPAL)).outputs.shape == (8, 2)

    asyncio.run(main())


def test_position_guard(registry: ModelRegistry) -> None:
    async def main() -> None:
        async with running(registry) as m:
            sid = m.create("gru-ar", None, None, PRINCIPAL).session_id  # input_size 2
            assert (await m.step(sid, values(4), PRINCIPAL, position=0)).position == 2
            with pytest.raises(FailedPrecondition, match="expected position 2, got 5"):
                await m.step(sid, values(2), PRINCIPAL, position=5)
            with pytest.raises(FailedPrecondition, match="expected position 2, got 0"):
                await m.step(sid, values(2), PRINCIPAL, position=0)  # other values at 0
            assert (await m.step(sid, values(2), PRINCIPAL, position=2)).position == 3

    asyncio.run(main())


def test_calls_refused_before_start_and_after_stop(registry: ModelRegistry) -> None:
    async def main() -> None:
        m = SessionManager(registry, CoreSettings(), MemoryDirectory)
        with pytest.raises(Unavailable, match="not started"):
            m.create("lstm-ar", None, None, PRINCIPAL)
        await m.start()
        sid = m.create("lstm-ar", None, None, PRINCIPAL).session_id
        await m.stop(grace_s=1)
        with pytest.raises(Unavailable, match="shutting down"):
            await m.step(sid, values(1), PRINCIPAL)
        with pytest.raises(Unavailable, match="shutting down"):
            await m.step_batch([sid], None, values(1), PRINCIPAL)
        with pytest.raises(Unavailable, match="shutting down"):
            m.create("lstm-ar", None, None, PRINCIPAL)
        await m.stop(grace_s=1)  # stopping twice is harmless

    asyncio.run(main())


def test_core_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match=r"max_batch=0, ort_threads=-1 \(expected > 0"):
        CoreSettings(max_batch=0, ort_threads=-1)
    assert CoreSettings(batch_delay_us=0).batch_delay_us == 0
