"""Shared sessions in process: managers on one real Redis serve each other's sessions.

Each manager stands for a replica; they share nothing but the Redis server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import numpy as np
import pytest

from seqserve.core.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from seqserve.core.runtime import ModelRegistry
from seqserve.core.sessions import SessionManager
from seqserve.core.settings import CoreSettings
from seqserve.store import open_store
from seqserve.store.memory import MemoryDirectory
from tests.core.conftest import PRINCIPAL
from tests.store.conftest import RedisCluster, RedisServer
from tests.support import ModelZoo, torch_reference

ATOL = 1e-5
MODEL = "lstm-ar"


def walk(n: int, features: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(0, 0.3, (n, features)), axis=0).astype(np.float32)


@asynccontextmanager
async def replicas(
    registry: ModelRegistry, url: str, n: int, **settings: float
) -> AsyncIterator[list[SessionManager]]:
    async with AsyncExitStack() as stack:
        managers = []
        for _ in range(n):
            m = SessionManager(
                registry, CoreSettings(**settings), MemoryDirectory, store=open_store(url)
            )
            await m.start()
            stack.push_async_callback(m.stop, 5.0)
            managers.append(m)
        yield managers


def test_a_session_moves_between_replicas_and_stays_exact(
    registry: ModelRegistry, zoo: ModelZoo, redis_server: RedisServer
) -> None:
    x = walk(40, 1, seed=3)
    expected = torch_reference(zoo.modules[MODEL], x)

    async def main() -> None:
        async with replicas(registry, redis_server.url, 3) as (a, b, c):
            sid = (await a.create_session(MODEL, None, "meter-7", PRINCIPAL)).session_id
            got = [(await a.step(sid, x[:10].ravel(), PRINCIPAL, position=0)).outputs]
            got.append((await b.step(sid, x[10:20].ravel(), PRINCIPAL, position=10)).outputs)
            # Back on a, whose copy is at 10: asked for 20, it loads the newer one.
            got.append((await a.step(sid, x[20:25].ravel(), PRINCIPAL, position=20)).outputs)
            for i in range(25, 40):  # one step a round, on whichever replica
                m = (a, b, c)[i % 3]
                got.append((await m.step(sid, x[i], PRINCIPAL, position=i)).outputs)
            np.testing.assert_allclose(np.concatenate(got), expected, atol=ATOL)
            info = await c.session_info(sid, PRINCIPAL)
            assert info.position == 40
            # A retry sent to another replica than the one that applied it: answered again.
            again = await a.step(sid, x[38], PRINCIPAL, position=38)
            np.testing.assert_allclose(again.outputs, expected[38:39], atol=ATOL)
            assert again.position == 40
            assert sum(m.sharing.loads for m in (a, b, c) if m.sharing) >= 3

    asyncio.run(main())


def test_two_replicas_racing_on_one_position_apply_it_once(
    registry: ModelRegistry, redis_server: RedisServer
) -> None:
    async def main() -> None:
        async with replicas(registry, redis_server.url, 2) as (a, b):
            sid = (await a.create_session(MODEL, None, None, PRINCIPAL)).session_id
            await b.session_info(sid, PRINCIPAL)  # both hold a copy at position 0
            applied = conflicts = 0
            for i in range(20):
                one, two = np.float32([i]), np.float32([100 + i])  # different requests
                results = await asyncio.gather(
                    a.step(sid, one, PRINCIPAL, position=i),
                    b.step(sid, two, PRINCIPAL, position=i),
                    return_exceptions=True,
                )
                ok = [r for r in results if not isinstance(r, BaseException)]
                errs = [r for r in results if isinstance(r, BaseException)]
                assert len(ok) == 1, results  # exactly one applied per position
                applied += 1
                for e in errs:
                    assert isinstance(e, (Unavailable, FailedPrecondition)), e
                    conflicts += isinstance(e, Unavailable)
                # The loser's retry meets the winner's step: refused, the session unchanged.
                loser, values = (b, two) if results[0] is ok[0] else (a, one)
                with pytest.raises(FailedPrecondition, match=f"expected position {i + 1}, got {i}"):
                    await loser.step(sid, values, PRINCIPAL, position=i)
            assert (await a.session_info(sid, PRINCIPAL)).position == applied == 20
            assert (await b.session_info(sid, PRINCIPAL)).position == 20
            assert conflicts >= 1  # the compare-and-set, not luck, settled some of them

    asyncio.run(main())


def test_a_stale_copy_stepped_without_a_position_is_refused_as_retryable(
    registry: ModelRegistry, redis_server: RedisServer
) -> None:
    async def main() -> None:
        async with replicas(registry, redis_server.url, 2) as (a, b):
            sid = (await a.create_session(MODEL, None, None, PRINCIPAL)).session_id
            await a.step(sid, np.float32([1.0]), PRINCIPAL)
            await b.step(sid, np.float32([2.0]), PRINCIPAL)  # b moves it on; a's copy is old
            with pytest.raises(Unavailable, match="changed on another server"):
                await a.step(sid, np.float32([3.0]), PRINCIPAL)
            assert a.sharing is not None and a.sharing.conflicts == 1
            result = await a.step(sid, np.float32([3.0]), PRINCIPAL)  # the retry: reloaded
            assert result.position == 3

    asyncio.run(main())


def test_create_reset_close_and_principals_hold_across_replicas(
    registry: ModelRegistry, redis_server: RedisServer
) -> None:
    async def main() -> None:
        async with replicas(registry, redis_server.url, 2) as (a, b):
            await a.create_session(MODEL, None, "dup", PRINCIPAL)
            with pytest.raises(AlreadyExists):
                await b.create_session(MODEL, None, "dup", PRINCIPAL)
            assert b.session_count == 0  # the refused copy is not kept
            with pytest.raises(NotFound):
                await b.session_info("dup", "mallory")  # another principal's: unknown
            await b.step("dup", np.float32([1.0, 2.0]), PRINCIPAL)
            assert (await b.reset_session("dup", PRINCIPAL)).position == 0
            assert (await a.session_info("dup", PRINCIPAL)).position == 0  # idle copy reloaded?
            await a.close_session("dup", PRINCIPAL)
            with pytest.raises(NotFound):
                await b.step("dup", np.float32([1.0]), PRINCIPAL, position=0)
            with pytest.raises(NotFound):
                await b.session_info("never", PRINCIPAL)

    asyncio.run(main())


def test_a_restarted_replica_serves_sessions_from_the_store_and_idle_ones_expire(
    registry: ModelRegistry, redis_server: RedisServer
) -> None:
    async def main() -> None:
        async with replicas(registry, redis_server.url, 1, session_ttl_s=1.0) as (a,):
            kept = (await a.create_session(MODEL, None, None, PRINCIPAL)).session_id
            idle = (await a.create_session(MODEL, None, None, PRINCIPAL)).session_id
            last = await a.step(kept, np.float32([1.0, 2.0]), PRINCIPAL)
        await asyncio.sleep(0.6)
        async with replicas(registry, redis_server.url, 1, session_ttl_s=1.0) as (a,):
            await a.step(kept, np.float32([3.0]), PRINCIPAL, position=2)
            again = await a.step(kept, np.float32([1.0, 2.0]), PRINCIPAL, position=0)
            np.testing.assert_array_equal(again.outputs, last.outputs)
            await asyncio.sleep(0.6)
            with pytest.raises(NotFound):  # idle 1.2 s > TTL: Redis expired its key
                await a.session_info(idle, PRINCIPAL)
            assert (await a.session_info(kept, PRINCIPAL)).position == 3

    asyncio.run(main())


def test_a_batch_spans_sessions_last_stepped_on_other_replicas(
    registry: ModelRegistry, zoo: ModelZoo, redis_server: RedisServer
) -> None:
    x = walk(6, 1, seed=5)

    async def main() -> None:
        async with replicas(registry, redis_server.url, 2) as (a, b):
            ids = [
                (await a.create_session(MODEL, None, None, PRINCIPAL)).session_id for _ in range(4)
            ]
            for sid in ids:
                await a.step(sid, x[:3].ravel(), PRINCIPAL)
            result = await b.step_batch(ids, None, np.repeat(x[3], 4), PRINCIPAL, positions=[3] * 4)
            assert not result.errors
            expected = torch_reference(zoo.modules[MODEL], x[:4])[3]
            assert result.output_lengths == [1] * 4 and result.positions == [4] * 4
            np.testing.assert_allclose(result.outputs, np.repeat(expected, 4), atol=ATOL)
            assert (await a.session_info(ids[0], PRINCIPAL)).position == 4

    asyncio.run(main())


def test_redis_going_away_fails_steps_as_retryable_and_serving_resumes(
    registry: ModelRegistry, redis_server: RedisServer
) -> None:
    async def main() -> None:
        async with replicas(registry, redis_server.url, 1) as (a,):
            sid = (await a.create_session(MODEL, None, None, PRINCIPAL)).session_id
            await a.step(sid, np.float32([1.0]), PRINCIPAL)
            redis_server.kill()
            with pytest.raises(Unavailable, match="session store is unavailable"):
                await a.step(sid, np.float32([2.0]), PRINCIPAL, position=1)
            redis_server.start()  # from its append-only file
            result = await a.step(sid, np.float32([2.0]), PRINCIPAL, position=1)
            assert result.position == 2

    asyncio.run(main())


def test_sessions_are_shared_on_a_redis_cluster(
    registry: ModelRegistry, zoo: ModelZoo, redis_cluster: RedisCluster
) -> None:
    """Each session's keys are in one hash slot; sessions spread over the nodes."""
    x = walk(9, 1, seed=8)
    expected = torch_reference(zoo.modules[MODEL], x)

    async def main() -> None:
        async with replicas(registry, redis_cluster.url, 2) as (a, b):
            ids = [
                (await a.create_session(MODEL, None, f"sensor-{i}", PRINCIPAL)).session_id
                for i in range(12)
            ]
            for sid in ids:
                await a.step(sid, x[:3].ravel(), PRINCIPAL, position=0)
                await b.step(sid, x[3:6].ravel(), PRINCIPAL, position=3)
            values = np.tile(x[6:9].ravel(), 12)  # each item's 3 steps, item after item
            result = await a.step_batch(ids, [3] * 12, values, PRINCIPAL, positions=[6] * 12)
            assert not result.errors and result.positions == [9] * 12
            for i in range(12):  # item i: its 3 outputs (time-major)
                got = result.outputs[i * 3 : (i + 1) * 3]
                np.testing.assert_allclose(got, expected[6:9, 0], atol=ATOL)
            store = a.sharing.store if a.sharing else None
            assert store is not None
            client = store._client  # which node holds each session: more than one
            nodes = {str(client.get_node_from_key(store.key(sid))) for sid in ids}
            assert len(nodes) >= 2

    asyncio.run(main())


def test_a_full_cache_drops_its_oldest_copies_and_loads_them_again(
    registry: ModelRegistry, redis_server: RedisServer
) -> None:
    """--max-sessions bounds what one server holds; the store holds every session."""

    async def main() -> None:
        async with replicas(registry, redis_server.url, 1, max_sessions=3) as (a,):
            ids = []
            for i in range(6):
                sid = (await a.create_session(MODEL, None, f"m-{i}", PRINCIPAL)).session_id
                await a.step(sid, np.float32([float(i)]), PRINCIPAL, position=0)
                ids.append(sid)
            assert a.session_count <= 3
            assert a.sharing is not None and a.sharing.dropped >= 3
            for i, sid in enumerate(ids):  # every one goes on where it was
                result = await a.step(sid, np.float32([float(i)]), PRINCIPAL, position=1)
                assert result.position == 2
            assert a.sharing.loads >= 3

    asyncio.run(main())
