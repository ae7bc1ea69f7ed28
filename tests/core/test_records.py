"""Journal record encoding: the one-session fast encoder writes what the general one does."""

from __future__ import annotations

import numpy as np
import pytest

from seqserve.core import records


@pytest.mark.parametrize(("t", "f", "o"), [(1, 1, 1), (5, 3, 2)])
def test_one_session_record_is_the_general_record_of_one_row(t: int, f: int, o: int) -> None:
    rng = np.random.default_rng(t * 100 + f)
    x = rng.standard_normal((t, f)).astype(np.float32)  # (T, F)
    y = rng.standard_normal((t, o)).astype(np.float32)  # (T, O)
    one = records.step(1.5e9, "sess-é1", 41, x, y)
    general = records.steps(1.5e9, ["sess-é1"], np.array([41]), x[None], y[None])
    assert one == general

    decoded = records.decode(one)
    assert isinstance(decoded, records.Steps)
    assert decoded.ids == ["sess-é1"]
    assert decoded.wall == 1.5e9
    assert decoded.starts.tolist() == [41]
    np.testing.assert_array_equal(decoded.x, x[None])  # (1, T, F)
    np.testing.assert_array_equal(decoded.y, y[None])  # (1, T, O)
    assert records.steps_of(one) == (["sess-é1"], [41], t)


def test_the_header_of_a_many_session_record_names_its_sessions() -> None:
    x = np.zeros((3, 2, 1), np.float32)  # (n, T, F)
    data = records.steps(0.0, ["a", "b", "c"], np.array([0, 5, 9]), x, x)
    assert records.steps_of(data) == (["a", "b", "c"], [0, 5, 9], 2)
    with pytest.raises(records.RecordError, match="expected a steps record"):
        records.steps_of(records.reset(0.0, "a") + bytes(40))


def test_a_truncated_record_is_refused_not_misread() -> None:
    x = np.ones((2, 1), np.float32)
    data = records.step(0.0, "s", 0, x, x)
    with pytest.raises(records.RecordError, match="more bytes"):
        records.decode(data[:-3])
