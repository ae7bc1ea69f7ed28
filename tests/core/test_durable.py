"""Durable sessions in process: a server's sessions come back from its store, exactly.

The store is a real SQLite file. A "crash" here stops the journal and closes
the store without the last checkpoint, so the next start must replay the
journal; killing a server process outright is tested over gRPC.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest

from seqserve.core.errors import FailedPrecondition, NotFound
from seqserve.core.journal import StoreError
from seqserve.core.runtime import ModelRegistry
from seqserve.core.sessions import SessionManager
from seqserve.core.settings import CoreSettings
from seqserve.store import open_store
from seqserve.store.memory import MemoryDirectory
from seqserve.store.sqlite import SqliteStore
from tests.core.conftest import PRINCIPAL, FakeClock
from tests.support import ModelZoo, torch_reference

ATOL = 1e-5


def walk(n: int, features: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(0, 0.3, (n, features)), axis=0).astype(np.float32)


@pytest.fixture
def spec(tmp_path: Path) -> str:
    """A journal's store (the shared Redis store has its tests in test_sharing.py)."""
    return f"sqlite:{tmp_path / 'sessions.db'}"


@asynccontextmanager
async def serving(
    registry: ModelRegistry, where: Path | str, *, crash: bool = False, **settings: float
) -> AsyncIterator[SessionManager]:
    """A manager on a store (a SQLite file's path, or a spec); `crash`: no last checkpoint."""
    spec = f"sqlite:{where}" if isinstance(where, Path) else where
    m = SessionManager(registry, CoreSettings(**settings), MemoryDirectory, store=open_store(spec))
    await m.start()
    try:
        yield m
    finally:
        if crash:
            durability = m.durability
            assert durability is not None
            await durability.journal.close()  # what was acknowledged is in the file
            await durability.store.close()
        else:
            await m.stop(grace_s=5)


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "crash"])
def test_sessions_continue_after_a_restart_as_if_never_stopped(
    registry: ModelRegistry, zoo: ModelZoo, spec: str, crash: bool
) -> None:
    path = spec
    lstm, gru = walk(30, 1, seed=1), walk(30, 2, seed=2)

    async def main() -> None:
        async with serving(registry, path, crash=crash) as m:
            a = m.create("lstm-ar", None, "meter-1", PRINCIPAL).session_id
            b = m.create("gru-ar", None, None, "bob").session_id
            gone = m.create("lstm-ar", None, "gone", PRINCIPAL).session_id
            fresh = m.create("lstm-ar", None, "fresh", PRINCIPAL).session_id
            await m.step(a, lstm[:10].ravel(), PRINCIPAL)
            for row in lstm[10:20]:  # one step a round: records of one step
                await m.step(a, row, PRINCIPAL)
            await m.step(b, gru[:12].ravel(), "bob")
            await m.step(fresh, lstm[:3].ravel(), PRINCIPAL)
            m.reset(fresh, PRINCIPAL)
            last = await m.step(b, gru[12:15].ravel(), "bob", position=12)
            m.close(gone, PRINCIPAL)
            await m.flushed()
        async with serving(registry, path) as m:
            assert m.session_count == 3
            assert (m.info(a, PRINCIPAL).position, m.info(b, "bob").position) == (20, 15)
            assert m.info(fresh, PRINCIPAL).position == 0  # the reset came back too
            with pytest.raises(NotFound):
                m.info(gone, PRINCIPAL)
            with pytest.raises(NotFound):
                m.info(b, PRINCIPAL)  # still bob's
            # A retry of the last step, its answer lost before the restart: the same answer.
            again = await m.step(b, gru[12:15].ravel(), "bob", position=12)
            np.testing.assert_array_equal(again.outputs, last.outputs)
            # The sessions go on from where they were, as PyTorch does on the whole sequence.
            got_a = (await m.step(a, lstm[20:].ravel(), PRINCIPAL, position=20)).outputs
            got_b = (await m.step(b, gru[15:].ravel(), "bob", position=15)).outputs
            np.testing.assert_allclose(
                got_a, torch_reference(zoo.modules["lstm-ar"], lstm)[20:], atol=ATOL
            )
            np.testing.assert_allclose(
                got_b, torch_reference(zoo.modules["gru-ar"], gru)[15:], atol=ATOL
            )
            with pytest.raises(FailedPrecondition, match="expected position 30, got 12"):
                await m.step(b, gru[:3].ravel(), "bob", position=12)  # other values at 12
        async with serving(registry, path) as m:  # and again, from the checkpoint alone
            assert m.info(a, PRINCIPAL).position == 30
            durability = m.durability
            assert durability is not None and durability.recovered is not None
            assert durability.recovered.replayed_records == 0

    asyncio.run(main())


def test_a_batch_round_is_one_record_and_replays_whole(
    registry: ModelRegistry, zoo: ModelZoo, spec: str
) -> None:
    path = spec
    xs = [walk(8, 2, seed=10 + i) for i in range(40)]

    async def main() -> None:
        async with serving(registry, path, crash=True) as m:
            ids = [m.create("gru-ar", None, None, PRINCIPAL).session_id for _ in xs]
            await m.flushed()
            durability = m.durability
            assert durability is not None
            before = durability.journal.records
            values = np.concatenate([x.ravel() for x in xs])
            result = await m.step_batch(ids, [8] * len(xs), values, PRINCIPAL)
            assert not result.errors
            assert durability.journal.records - before == 1  # 40 sessions, one record
        async with serving(registry, path) as m:
            recovered = m.durability.recovered if m.durability else None
            assert recovered is not None and recovered.replayed_steps == 40
            more = walk(2, 2, seed=99)
            for sid, x in zip(ids, xs, strict=True):
                got = (await m.step(sid, more.ravel(), PRINCIPAL, position=8)).outputs
                want = torch_reference(zoo.modules["gru-ar"], np.concatenate([x, more]))[8:]
                np.testing.assert_allclose(got, want, atol=ATOL)

    asyncio.run(main())


def test_idle_sessions_expire_across_a_restart_by_the_wall_clock(
    registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sessions.db"

    async def main() -> None:
        async with serving(registry, path, session_ttl_s=60) as m:
            old = m.create("lstm-ar", None, "old", PRINCIPAL).session_id
            await m.step(old, [1.0], PRINCIPAL)
        later = time.time() + 61
        monkeypatch.setattr("time.time", lambda: later)
        async with serving(registry, path, session_ttl_s=60) as m:
            assert m.session_count == 0
            with pytest.raises(NotFound):
                m.info(old, PRINCIPAL)
        monkeypatch.undo()
        with sqlite3.connect(path) as db:  # and the store no longer holds it
            assert db.execute("SELECT count(*) FROM sessions").fetchone() == (0,)

    asyncio.run(main())


def test_a_store_file_serves_one_server_at_a_time(registry: ModelRegistry, tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"

    async def main() -> None:
        async with serving(registry, path):
            second = SessionManager(
                registry, CoreSettings(), MemoryDirectory, store=SqliteStore(f"sqlite:{path}")
            )
            with pytest.raises(StoreError, match="is in use by another server"):
                await second.start()
            assert second.durability is not None
            await second.durability.store.close()

    asyncio.run(main())


def test_sessions_of_a_model_no_longer_served_are_kept_until_it_returns(
    registry: ModelRegistry, zoo: ModelZoo, spec: str
) -> None:
    path = spec
    x = walk(12, 1, seed=5)
    lstm_only = ModelRegistry([registry.get("lstm-ar")])
    rnn_only = ModelRegistry([registry.get("rnn-ar")])

    async def main() -> None:
        async with serving(lstm_only, path, crash=True) as m:
            sid = m.create("lstm-ar", None, "kept", PRINCIPAL).session_id
            await m.step(sid, x[:6].ravel(), PRINCIPAL)
        async with serving(rnn_only, path) as m:  # lstm-ar/1 is gone for a while
            assert m.session_count == 0
            assert m.durability is not None and m.durability.recovered is not None
            assert list(m.durability.recovered.dormant) == ["kept"]
        async with serving(lstm_only, path) as m:  # back: the session goes on
            assert m.info(sid, PRINCIPAL).position == 6
            got = (await m.step(sid, x[6:].ravel(), PRINCIPAL, position=6)).outputs
            want = torch_reference(zoo.modules["lstm-ar"], x)[6:]
            np.testing.assert_allclose(got, want, atol=ATOL)

    asyncio.run(main())


def test_idle_time_comes_back_whatever_the_new_process_clock(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    """The monotonic clock of the next process starts elsewhere: rows carry wall-clock time."""
    clock = FakeClock(now=10.0)

    async def main() -> None:
        m = SessionManager(
            registry,
            CoreSettings(session_ttl_s=100),
            MemoryDirectory,
            clock=clock,
            store=SqliteStore(f"sqlite:{tmp_path / 's.db'}"),
        )
        await m.start()
        sid = m.create("lstm-ar", None, None, PRINCIPAL).session_id
        await m.step(sid, [1.0], PRINCIPAL)
        clock.advance(30)
        await m.stop(grace_s=1)
        clock2 = FakeClock(now=5_000.0)
        m2 = SessionManager(
            registry,
            CoreSettings(session_ttl_s=100),
            MemoryDirectory,
            clock=clock2,
            store=SqliteStore(f"sqlite:{tmp_path / 's.db'}"),
        )
        await m2.start()
        idle = m2.info(sid, PRINCIPAL).idle_seconds
        await m2.stop(grace_s=1)
        assert 30 <= idle < 35  # 30 s on the first clock, then moments

    asyncio.run(main())
