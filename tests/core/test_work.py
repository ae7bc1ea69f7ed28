"""Helpers of seqserve.core.work that the batch path leans on."""

from __future__ import annotations

import numpy as np
import pytest

from seqserve.core.work import distinct


@pytest.mark.parametrize(
    "values",
    [[], [3], [3, 3, 3], [2, 0, 2, 1], [5, -1, 5], list(range(50, 0, -1))],
)
def test_distinct_is_np_unique(values: list[int]) -> None:
    a = np.array(values, np.int64)
    got = distinct(a)
    np.testing.assert_array_equal(got, np.unique(a))
    assert got.dtype == np.int64
