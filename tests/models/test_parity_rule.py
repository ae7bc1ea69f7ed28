"""The comparison rule: tolerance plus one float32 step of the expected value."""

from __future__ import annotations

import numpy as np
import pytest

from seqserve.models.parity import close, excess_diff


def test_one_float32_step_at_a_large_value_is_allowed() -> None:
    expected = np.float32(370.0)
    one_step = np.nextafter(expected, np.float32(400.0))
    assert float(one_step - expected) == pytest.approx(3.0517578125e-05)
    assert excess_diff([one_step], [expected]) == 0.0
    assert close([one_step], [expected])


def test_differences_beyond_the_step_count_against_the_tolerance() -> None:
    expected = np.array([370.0, 0.5], np.float32)
    assert not close(expected + np.float32(2e-4), expected)
    assert not close(np.array([370.0, 0.50002], np.float32), expected)
    assert close(np.array([370.0, 0.500005], np.float32), expected)


def test_nan_is_never_close() -> None:
    assert not close([np.nan], [1.0])


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match=r"expected shape \(2,\), got \(3,\)"):
        excess_diff([1.0, 2.0, 3.0], [1.0, 2.0])
