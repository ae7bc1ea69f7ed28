"""Forecast against PyTorch's own rollout, and the batch path's validation."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from seqserve.core.batchplan import BatchPlan
from seqserve.core.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from seqserve.core.runtime import ModelRegistry
from seqserve.core.settings import CoreSettings
from tests.core.conftest import PRINCIPAL, running
from tests.support import ModelZoo, torch_reference, torch_rollout

ATOL = 1e-5


def walk(steps: int, features: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(0, 0.3, (steps, features)), axis=0).astype(np.float32)


@pytest.mark.parametrize("model", ["lstm-ar", "gru-ar", "rnn-ar"])
def test_forecast_matches_pytorch_rollout_and_leaves_session_unchanged(
    registry: ModelRegistry, zoo: ModelZoo, model: str
) -> None:
    f = zoo.specs[model].input_size
    history = walk(40, f, seed=11)
    more = walk(5, f, seed=12)

    async def main() -> None:
        async with running(registry) as m:
            sid = m.create(model, None, None, PRINCIPAL).session_id
            last = (await m.step(sid, history.ravel(), PRINCIPAL)).outputs[-1]
            result = await m.forecast(sid, 25, PRINCIPAL)
            assert result.position == 40
            assert result.outputs.shape == (25, f)
            np.testing.assert_array_equal(result.outputs[0], last)  # the stored prediction
            want = torch_rollout(zoo.modules[model], history, 25)
            np.testing.assert_allclose(result.outputs, want, rtol=0, atol=ATOL)
            # Twice gives the same answer, and the session continues as if never forecast.
            again = await m.forecast(sid, 25, PRINCIPAL)
            np.testing.assert_array_equal(again.outputs, result.outputs)
            assert m.info(sid, PRINCIPAL).position == 40
            got = (await m.step(sid, more.ravel(), PRINCIPAL)).outputs
            full = torch_reference(zoo.modules[model], np.concatenate([history, more]))
            np.testing.assert_allclose(got, full[40:], rtol=0, atol=ATOL)

    asyncio.run(main())


def test_forecast_preconditions(registry: ModelRegistry) -> None:
    async def main() -> None:
        async with running(registry, CoreSettings(max_steps_per_request=16)) as m:
            sid = m.create("lstm-ar", None, None, PRINCIPAL).session_id
            with pytest.raises(
                FailedPrecondition, match=r"has no step yet.*expected position >= 1, got 0"
            ):
                await m.forecast(sid, 3, PRINCIPAL)
            await m.step(sid, [0.5], PRINCIPAL)
            for horizon in (0, 17):
                with pytest.raises(
                    InvalidArgument,
                    match=f"horizon from 1 to max_steps_per_request=16, got {horizon}",
                ):
                    await m.forecast(sid, horizon, PRINCIPAL)
            assert len((await m.forecast(sid, 16, PRINCIPAL)).outputs) == 16
            wide = m.create("lstm-wide", None, None, PRINCIPAL).session_id
            await m.step(wide, [1.0, 2.0, 3.0], PRINCIPAL)
            with pytest.raises(FailedPrecondition, match="lstm-wide/1 is not autoregressive"):
                await m.forecast(wide, 2, PRINCIPAL)
            m.reset(sid, PRINCIPAL)
            with pytest.raises(FailedPrecondition, match="no step yet"):
                await m.forecast(sid, 3, PRINCIPAL)

    asyncio.run(main())


def test_batch_whole_request_errors(registry: ModelRegistry) -> None:
    async def main() -> None:
        async with running(registry) as m:
            a = m.create("lstm-ar", None, None, PRINCIPAL).session_id
            b = m.create("lstm-ar", None, None, PRINCIPAL).session_id
            cases = [
                (([], None, []), "expected at least one session in a batch, got 0"),
                (([a, b, a], None, [1, 2, 3]), f"session '{a}' appears at items 0 and 2"),
                (([a, b], [1], [1, 2]), r"expected 2 times \(one per session\) or none, got 1"),
                (([a, b], [1, -1], [1]), r"expected times\[1\] >= 1, got -1"),
                (
                    ([a, b], [2, 1], [1, 2]),
                    r"expected 3 values \(sum over items of times\[i\] \* input_size\), got 2",
                ),
            ]
            for (ids, times, vals), message in cases:
                with pytest.raises(InvalidArgument, match=message):
                    await m.step_batch(ids, times, np.asarray(vals, np.float32), PRINCIPAL)
            assert m.info(a, PRINCIPAL).position == 0
            assert m.info(b, PRINCIPAL).position == 0

    asyncio.run(main())


def test_batch_item_errors_leave_the_other_items_correct(
    registry: ModelRegistry, zoo: ModelZoo
) -> None:
    async def main() -> None:
        async with running(registry, CoreSettings(max_steps_per_request=4)) as m:
            ids = [m.create("gru-ar", None, None, PRINCIPAL).session_id for _ in range(4)]
            wide = m.create("lstm-wide", None, None, PRINCIPAL).session_id  # F=3, O=2
            x = [walk(t, 2, seed=i) for i, t in enumerate([2, 0, 3, 5])]  # gru: F=2, O=2
            bad = walk(1, 2, seed=9)
            bad[0, 1] = np.nan
            w = walk(2, 3, seed=10)
            session_ids = [ids[0], "nobody", ids[1], ids[2], ids[3], wide, "later"]
            times = [2, 1, 0, 3, 5, 2, 1]
            # With input sizes 2 and 3 in one request, an unknown session's share of the
            # values cannot be known, so nothing after it could be parsed.
            with pytest.raises(NotFound, match="mixes input sizes"):
                await m.step_batch(session_ids, times, np.zeros(2 * 14 + 6, np.float32), PRINCIPAL)
            session_ids = [ids[0], "nobody", ids[1], ids[2], ids[3]]
            times = [2, 1, 0, 3, 5]
            vals = np.concatenate([x[0].ravel(), [0.0, 0.0], x[2].ravel(), x[3].ravel()])
            result = await m.step_batch(session_ids, times, vals.astype(np.float32), PRINCIPAL)
            kinds = {i: type(e) for i, e in result.errors}
            assert kinds == {1: NotFound, 2: InvalidArgument, 4: InvalidArgument}
            messages = dict(result.errors)
            assert "times[2]=0" in str(messages[2])
            assert "max_steps_per_request=4 steps, got times[4]=5" in str(messages[4])
            assert result.output_lengths == [4, 0, 0, 6, 0]
            assert result.positions == [2, 0, 0, 3, 0]
            module = zoo.modules["gru-ar"]
            want = np.concatenate(
                [torch_reference(module, x[0]).ravel(), torch_reference(module, x[2]).ravel()]
            )
            np.testing.assert_allclose(result.outputs, want, rtol=0, atol=ATOL)
            # A NaN fails its item only; the other model's session in the same request proceeds.
            result = await m.step_batch(
                [ids[3], wide], [1, 2], np.concatenate([bad.ravel(), w.ravel()]), PRINCIPAL
            )
            assert [i for i, _ in result.errors] == [0]
            assert "got nan at index 1 (step 0, feature 1)" in str(result.errors[0][1])
            assert result.output_lengths == [0, 4]
            np.testing.assert_allclose(
                result.outputs, torch_reference(zoo.modules["lstm-wide"], w).ravel(), atol=ATOL
            )
            assert m.info(ids[3], PRINCIPAL).position == 0

    asyncio.run(main())


def test_a_front_end_may_refuse_a_validated_batch_before_any_step(
    registry: ModelRegistry,
) -> None:
    """`admit` sees what the answer will hold; raising there applies nothing."""

    async def main() -> None:
        async with running(registry) as m:
            gru, other = (m.create("gru-ar", None, None, PRINCIPAL).session_id for _ in range(2))
            seen: list[tuple[list[bool], list[int], list[int]]] = []

            def refuse(plan: BatchPlan) -> None:
                seen.append(
                    (plan.attempted().tolist(), plan.output_values().tolist(), sorted(plan.errors))
                )
                raise ResourceExhausted("too big for this transport")

            values = np.zeros((3 + 1 + 2) * 2, np.float32)  # F=2, O=2
            with pytest.raises(ResourceExhausted, match="too big"):
                await m.step_batch(
                    [gru, "nobody", other], [3, 1, 2], values, PRINCIPAL, admit=refuse
                )
            # The unknown session fails alone; the others would return T * O values each.
            assert seen == [([True, False, True], [6, 0, 4], [1])]
            assert m.info(gru, PRINCIPAL).position == 0
            assert m.info(other, PRINCIPAL).position == 0
            result = await m.step_batch([gru, other], [3, 2], np.zeros(10, np.float32), PRINCIPAL)
            assert result.positions == [3, 2]

    asyncio.run(main())
