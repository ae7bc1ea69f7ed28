"""Record encoding: the fast encoders (one session, many rows) write what the general ones do."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from seqserve.core import records
from seqserve.core.runtime import ModelRegistry
from seqserve.core.snapshots import snapshot, snapshot_rows
from tests.core.conftest import running


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


@pytest.mark.parametrize("model", ["lstm-ar", "gru-ar", "lstm-wide"])
def test_rows_built_in_bulk_are_the_rows_built_one_by_one(
    registry: ModelRegistry, model: str
) -> None:
    """The shared store's bulk rows: byte for byte what `encode_row(snapshot(...))` writes,
    for sessions at different positions, with and without long answers, of two principals."""
    rng = np.random.default_rng(7)

    async def main() -> None:
        async with running(registry) as m:
            f = registry.get(model).spec.input_size
            ids = []
            for i, principal in enumerate(["alice", "bob-é", "alice", "carol", "bob-é"]):
                ids.append((m.create(model, None, f"sess-{i}-ü", principal).session_id, principal))
            for k, (sid, principal) in enumerate(ids):
                for t in [1, 3, 1, 1, 2][: k + 1]:  # T > 1 keeps a long answer
                    x = rng.standard_normal(t * f).astype(np.float32)
                    await m.step(sid, x, principal)
            m.reset(ids[3][0], ids[3][1])  # a reset session: nothing retained
            version = next(v for v in m.versions if v.model.name == model)
            sessions = [m.directory.get(sid) for sid, _ in ids]
            sessions = [s for s in sessions if s is not None]
            assert len(sessions) == len(ids)
            order = [4, 0, 3, 1, 2]  # any order, not slot order
            picked = [sessions[i] for i in order]
            mono, wall = 123.25, 1.7e9
            one_by_one = [records.encode_row(snapshot(version, s, mono, wall)) for s in picked]
            assert snapshot_rows(version, picked, mono, wall) == one_by_one
            decoded = records.decode_row(one_by_one[0])
            assert decoded.session_id == ids[4][0] and decoded.position > 0

    asyncio.run(main())
