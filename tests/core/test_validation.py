"""One set of messages: the single, stream and batch paths say the same thing of the same fault."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from seqserve.core import validation
from seqserve.core.errors import InvalidArgument
from seqserve.core.runtime import ModelRegistry
from seqserve.core.settings import CoreSettings
from tests.core.conftest import PRINCIPAL, running

WIDE = "lstm-wide"  # input_size 3


def test_a_fault_reads_the_same_on_the_single_and_the_batch_path(
    registry: ModelRegistry,
) -> None:
    bad = np.arange(6, dtype=np.float32)
    bad[4] = np.nan  # step 1, feature 1 of a 3-feature model
    long = np.zeros(27, np.float32)  # T = 9 > 8

    async def main() -> None:
        async with running(registry, CoreSettings(max_steps_per_request=8)) as m:
            sid, other = (m.create(WIDE, None, None, PRINCIPAL).session_id for _ in range(2))
            said: dict[str, list[str]] = {}
            for name, values, times in (("nan", bad, 2), ("long", long, 9)):
                with pytest.raises(InvalidArgument) as single:
                    await m.step(sid, values, PRINCIPAL)
                batch = np.concatenate([np.zeros(3, np.float32), values])
                result = await m.step_batch([other, sid], [1, times], batch, PRINCIPAL)
                ((index, item),) = result.errors
                assert index == 1
                said[name] = [str(single.value), str(item)]
            nan_single, nan_item = said["nan"]
            assert nan_single == "expected finite values, got nan at index 4 (step 1, feature 1)"
            assert nan_item == f"item 1: {nan_single}"
            long_single, long_item = said["long"]
            assert long_single == (
                "expected at most max_steps_per_request=8 steps, got T=9 (27 values)"
            )
            assert (
                long_item
                == "item 1: expected at most max_steps_per_request=8 steps, got times[1]=9"
            )
            assert m.info(sid, PRINCIPAL).position == 0
            assert m.info(other, PRINCIPAL).position == 2  # its items went through, twice

    asyncio.run(main())


def test_step_count_bounds() -> None:
    assert validation.step_count(1, 4, "T=1") is None
    assert validation.step_count(4, 4, "T=4") is None
    assert (
        str(validation.step_count(0, 4, "times[3]=0")) == "expected at least 1 step, got times[3]=0"
    )
    assert "at most max_steps_per_request=4 steps, got T=5" in str(
        validation.step_count(5, 4, "T=5")
    )


def test_steps_keep_a_float32_array_and_convert_anything_else() -> None:
    x = np.arange(6, dtype=np.float32)
    steps = validation.steps(x, 3, 8)
    assert steps.shape == (2, 3) and np.shares_memory(steps, x)  # handed over, not copied
    from_list = validation.steps([1, 2, 3], 3, 8)
    assert from_list.dtype == np.float32 and from_list.shape == (1, 3)


@pytest.mark.parametrize("n", [1, validation.SMALL_VALUES, validation.SMALL_VALUES + 1, 300])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_is_found_whatever_the_request_size(n: int, bad: float) -> None:
    """Short requests are checked value by value, long ones with numpy: both see every value."""
    values = np.linspace(-3e38, 3e38, n).astype(np.float32)  # finite, to float32's extremes
    assert validation.steps(values, 1, 4096).shape == (n, 1)
    values[n - 1] = bad  # the last value: a check that stops early misses it
    with pytest.raises(InvalidArgument) as raised:
        validation.steps(values, 1, 4096)
    assert str(raised.value) == (
        f"expected finite values, got {float(bad)} at index {n - 1} (step {n - 1}, feature 0)"
    )
