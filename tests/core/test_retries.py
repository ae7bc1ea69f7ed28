"""Exactly-once steps: a request that names its position is applied once, retried or refused."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from seqserve.core.answers import RETAINED, digest, digests
from seqserve.core.errors import FailedPrecondition
from seqserve.core.runtime import ModelRegistry
from tests.core.conftest import PRINCIPAL, running
from tests.support import ModelZoo, torch_reference

ATOL = 1e-5
MODEL = "gru-ar"  # two inputs, two outputs


def walk(n: int, seed: int) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).normal(0, 0.3, (n, 2)), axis=0).astype(np.float32)


def test_the_digest_is_fixed_arithmetic_of_the_values() -> None:
    x = walk(40, seed=1)  # (40, 2)
    rows = x.reshape(8, 10)  # (B, K)
    vectorised = digests(rows)
    assert [digest(r) for r in rows] == vectorised.tolist()  # both ways agree
    assert digest(x[:20]) == digest(x[:20].copy())  # values, not identity
    assert len({digest(x[:k]) for k in range(1, 40)}) == 39  # every prefix differs
    changed = x[:3].copy()
    changed[1, 0] = np.nextafter(changed[1, 0], np.float32(9))  # one bit of one value
    assert digest(changed) != digest(x[:3])
    # The number itself is part of the contract (it is stored): it never changes.
    assert digest(np.array([0.5], np.float32)) == 2687617215011749889


def test_a_retry_is_answered_again_and_applies_nothing(
    registry: ModelRegistry, zoo: ModelZoo
) -> None:
    x = walk(12, seed=2)

    async def main() -> None:
        async with running(registry) as m:
            sid = m.create(MODEL, None, None, PRINCIPAL).session_id
            first = await m.step(sid, x[:3].ravel(), PRINCIPAL, position=0)
            again = await m.step(sid, x[:3].ravel(), PRINCIPAL, position=0)
            np.testing.assert_array_equal(again.outputs, first.outputs)
            assert (first.position, again.position) == (3, 3)
            # One step of a session that kept stepping: still answered, still not applied.
            rest = [await m.step(sid, x[i], PRINCIPAL, position=i) for i in range(3, 12)]
            np.testing.assert_array_equal(
                (await m.step(sid, x[5], PRINCIPAL, position=5)).outputs, rest[2].outputs
            )
            assert m.info(sid, PRINCIPAL).position == 12
            got = np.concatenate([first.outputs, *(r.outputs for r in rest)])
            np.testing.assert_allclose(got, torch_reference(zoo.modules[MODEL], x), atol=ATOL)

    asyncio.run(main())


def test_only_the_last_retained_requests_can_be_retried(registry: ModelRegistry) -> None:
    x = walk(RETAINED + 3, seed=3)

    async def main() -> None:
        async with running(registry) as m:
            sid = m.create(MODEL, None, None, PRINCIPAL).session_id
            answers = [
                (await m.step(sid, x[i], PRINCIPAL, position=i)).outputs for i in range(len(x))
            ]
            end = len(x)
            for i in range(end - RETAINED, end):
                retried = await m.step(sid, x[i], PRINCIPAL, position=i)
                np.testing.assert_array_equal(retried.outputs, answers[i])
                assert retried.position == end
            with pytest.raises(FailedPrecondition, match=f"expected position {end}, got 2$"):
                await m.step(sid, x[2], PRINCIPAL, position=2)
            with pytest.raises(
                FailedPrecondition, match=f"expected position {end}, got {end - 1}$"
            ):
                await m.step(sid, x[0], PRINCIPAL, position=end - 1)  # that start, other values
            assert m.info(sid, PRINCIPAL).position == end

    asyncio.run(main())


def test_a_reset_forgets_what_could_be_retried(registry: ModelRegistry) -> None:
    x = walk(2, seed=4)

    async def main() -> None:
        async with running(registry) as m:
            sid = m.create(MODEL, None, None, PRINCIPAL).session_id
            await m.step(sid, x.ravel(), PRINCIPAL, position=0)
            m.reset(sid, PRINCIPAL)
            # Position 0 again, same values: the session is there, so it is applied anew.
            assert (await m.step(sid, x.ravel(), PRINCIPAL, position=0)).position == 2
            m.reset(sid, PRINCIPAL)
            with pytest.raises(FailedPrecondition, match="expected position 0, got 1"):
                await m.step(sid, x[1], PRINCIPAL, position=1)

    asyncio.run(main())


def test_batch_items_name_their_positions(registry: ModelRegistry, zoo: ModelZoo) -> None:
    """A gateway resends a batch whose answer it lost: every item is answered again."""
    xs = [walk(3, seed=10 + i) for i in range(3)]

    async def main() -> None:
        async with running(registry) as m:
            ids = [m.create(MODEL, None, None, PRINCIPAL).session_id for _ in xs]
            values = np.concatenate([x.ravel() for x in xs])
            first = await m.step_batch(ids, [3, 3, 3], values, PRINCIPAL, positions=[0, 0, 0])
            again = await m.step_batch(ids, [3, 3, 3], values, PRINCIPAL, positions=[0, 0, 0])
            assert not first.errors and not again.errors
            np.testing.assert_array_equal(again.outputs, first.outputs)
            assert first.positions == again.positions == [3, 3, 3]
            # One item moves on, one is retried, one names a position its session is not at.
            nxt = walk(1, seed=20)
            mixed = await m.step_batch(
                ids,
                [1, 3, 1],
                np.concatenate([nxt.ravel(), xs[1].ravel(), nxt.ravel()]),
                PRINCIPAL,
                positions=[3, 0, 7],
            )
            assert [(i, str(e)) for i, e in mixed.errors] == [
                (2, f"session {ids[2]!r}: expected position 3, got 7")
            ]
            assert mixed.positions == [4, 3, 3]
            assert mixed.output_lengths == [2, 6, 0]
            np.testing.assert_array_equal(mixed.outputs[2:], first.outputs[6:12])  # item 1 again
            want = torch_reference(zoo.modules[MODEL], np.concatenate([xs[0], nxt]))[-1]
            np.testing.assert_allclose(mixed.outputs[:2], want, atol=ATOL)
            with pytest.raises(Exception, match=r"expected 3 positions \(one per session\)"):
                await m.step_batch(ids, None, values[:6], PRINCIPAL, positions=[0, 0])

    asyncio.run(main())
