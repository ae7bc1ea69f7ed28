"""The state slab: slots, growth, free-list reuse, layouts, and memory per session."""

from __future__ import annotations

import asyncio
import gc
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from seqserve.core.runtime import ModelRegistry
from seqserve.core.sessions import SessionManager
from seqserve.core.settings import CoreSettings
from seqserve.core.slab import GROWTH, Slab
from seqserve.core.spec import ModelSpec, StateSpec
from seqserve.store.memory import MemoryDirectory
from tests.core.conftest import PRINCIPAL
from tests.support import ModelShape, export_shapes


def spec_with(*states: StateSpec) -> ModelSpec:
    return ModelSpec(
        cell="custom",
        input_size=2,
        output_size=3,
        hidden_size=4,
        num_layers=1,
        states=states,
        autoregressive=False,
        parameters=0,
        macs_per_step=0,
    )


# Batch axes in three places, to prove nothing assumes (L, B, H).
SPEC = spec_with(
    StateSpec("a", "a_out", (-1, 3), 0),
    StateSpec("b", "b_out", (2, -1, 4), 1),
    StateSpec("c", "c_out", (2, 3, -1), 2),
)


def fill(slab: Slab[str], slot: int, value: float) -> None:
    slots = np.array([slot])
    slab.scatter(
        slots, [np.full((1, 3), value), np.full((2, 1, 4), value), np.full((2, 3, 1), value)]
    )
    slab.last_output[slot] = value


def test_gather_and_scatter_use_each_state_s_batch_axis() -> None:
    slab: Slab[str] = Slab(SPEC, reserve=4)
    slots = [slab.alloc(0.0, f"s{i}") for i in range(5)]
    for s in slots:
        fill(slab, s, float(s + 1))
    picked = np.array([slots[3], slots[0]])
    a, b, c = slab.gather(picked)
    assert (a.shape, b.shape, c.shape) == ((2, 3), (2, 2, 4), (2, 3, 2))
    assert a[:, 0].tolist() == [4.0, 1.0]
    assert b[0, :, 0].tolist() == [4.0, 1.0]
    assert c[0, 0, :].tolist() == [4.0, 1.0]
    # Gathered arrays are copies: writing them does not touch the slab.
    a[:] = -1
    assert slab.gather(picked)[0][:, 0].tolist() == [4.0, 1.0]


def test_growth_keeps_state_and_free_slots_are_reused_zeroed() -> None:
    slab: Slab[str] = Slab(SPEC, reserve=2)
    slots = [slab.alloc(float(i), f"s{i}") for i in range(200)]
    assert slots == list(range(200))
    assert slab.capacity <= int(200 * GROWTH) + 1
    for s in slots:
        fill(slab, s, float(s))
        slab.position[s] = s
    slab.alloc(0.0, "one more")  # may grow again: contents must survive
    everything = np.array(slots)
    a, b, c = slab.gather(everything)
    assert a[:, 0].tolist() == [float(s) for s in slots]
    assert c[1, 2, :].tolist() == [float(s) for s in slots]
    assert slab.position[everything].tolist() == slots

    epoch = int(slab.epoch[17])
    slab.free(17)
    slab.free(42)
    assert slab.used == 199
    assert slab.idle_since(1e9).tolist().count(17) == 0  # free slots are never "idle"
    assert slab.alloc(0.0, "reuses") == 42  # last freed, first reused
    assert slab.alloc(0.0, "reuses too") == 17
    assert int(slab.epoch[17]) != epoch
    a, b, c = slab.gather(np.array([17]))
    assert not a.any() and not b.any() and not c.any()
    assert slab.last_output[17].tolist() == [0.0, 0.0, 0.0]
    assert slab.position[17] == 0
    assert slab.owners[17] == "reuses too"
    # (3 + 8 + 6) state floats, 3 output floats, position, last access, epoch, dirty,
    # and the answers kept for retries: 8 starts, 8 digests, 8 x 3 outputs, a count
    retained = 8 * 8 + 8 * 8 + 4 * 8 * 3 + 4
    assert slab.bytes_per_slot() == 4 * (3 + 8 + 6) + 4 * 3 + 8 + 8 + 4 + 1 + retained
    assert slab.used_bytes() == slab.used * slab.bytes_per_slot()


def test_reset_zeroes_one_slot_and_bumps_its_epoch() -> None:
    slab: Slab[str] = Slab(SPEC)
    x, y = slab.alloc(0.0, "x"), slab.alloc(0.0, "y")
    fill(slab, x, 5.0)
    fill(slab, y, 6.0)
    epoch = int(slab.epoch[x])
    slab.reset(x, 0.0)
    assert int(slab.epoch[x]) == epoch + 1
    assert not slab.gather(np.array([x]))[1].any()
    assert slab.gather(np.array([y]))[1].min() == 6.0


def batch_states(values: list[float]) -> list[np.ndarray]:
    """SPEC's three states for a batch of len(values) rows, row i filled with values[i]."""
    v = np.array(values, np.float32)
    b = len(v)
    return [
        np.broadcast_to(v[:, None], (b, 3)).copy(),  # (B, 3)
        np.broadcast_to(v[None, :, None], (2, b, 4)).copy(),  # (2, B, 4)
        np.broadcast_to(v[None, None, :], (2, 3, b)).copy(),  # (2, 3, B)
    ]


def row_of(slab: Slab[str], slot: int) -> list[float]:
    """One value of each state of a slot, its last output and its position."""
    a, b, c = slab.gather(np.array([slot]))
    return [float(a[0, 0]), float(b[1, 0, 3]), float(c[1, 2, 0]), float(slab.last_output[slot, 0])]


def test_commit_writes_only_the_rows_whose_slot_is_unchanged() -> None:
    """The commit rule: state, last output, position and last access are written for a
    row exactly when its slot's epoch is the one it was taken with."""
    slab: Slab[str] = Slab(SPEC, reserve=8)
    slots = np.array([slab.alloc(0.0, f"s{i}") for i in range(4)])
    for s in slots.tolist():
        fill(slab, s, -1.0)
    epochs = slab.epoch[slots].copy()  # (B,) as the rows were taken
    slab.reset(int(slots[1]), 5.0)  # reset while the round ran
    slab.free(int(slots[3]))  # closed while the round ran
    before = {s: row_of(slab, s) for s in slots.tolist()}
    last = np.array([[10.0] * 3, [11.0] * 3, [12.0] * 3, [13.0] * 3], np.float32)  # (B, O)
    y = np.repeat(last[:, None, :], 3, axis=1)  # (B, T=3, O): each row 3 steps, last as given
    digests = np.arange(4, dtype=np.uint64) + 100
    applied = slab.commit(slots, epochs, batch_states([10, 11, 12, 13]), y, digests, 9.0)
    assert applied.tolist() == [True, False, True, False]
    for i in (0, 2):
        s = int(slots[i])
        assert row_of(slab, s) == [10.0 + i] * 4
        assert (int(slab.position[s]), float(slab.last_access[s])) == (3, 9.0)
    for i in (1, 3):
        s = int(slots[i])
        assert row_of(slab, s) == before[s]  # not written: the reset's zeros, the freed slot
    assert int(slab.position[slots[1]]) == 0 and float(slab.last_access[slots[1]]) == 5.0
    assert float(slab.last_access[slots[3]]) == np.inf  # a free slot is never idle
    # A second commit advances the position again from where the first left it.
    epochs = slab.epoch[slots[:1]].copy()
    y2 = np.repeat(last[:1, None, :] + 10, 2, axis=1)  # (1, T=2, O)
    slab.commit(slots[:1], epochs, batch_states([20]), y2, np.array([7], np.uint64), 10.0)
    assert (int(slab.position[slots[0]]), row_of(slab, int(slots[0]))) == (5, [20.0] * 4)
    # Each applied request's answer is kept for a retry, found by its start and digest.
    s0 = int(slots[0])
    np.testing.assert_array_equal(slab.answers.find(s0, 0, 100, 3), y[0])
    np.testing.assert_array_equal(slab.answers.find(s0, 3, 7, 2), y2[0])
    assert slab.answers.find(s0, 3, 8, 2) is None  # other values
    assert slab.answers.find(int(slots[1]), 0, 101, 3) is None  # the reset row kept nothing


def test_commit_one_is_the_same_rule_for_one_session() -> None:
    slab: Slab[str] = Slab(SPEC, reserve=4)
    x, y = slab.alloc(0.0, "x"), slab.alloc(0.0, "y")
    fill(slab, y, 7.0)
    one = batch_states([4.0])  # B = 1
    epoch = int(slab.epoch[x])
    out = np.full((2, 3), 4.0, np.float32)  # (T=2, O)
    assert slab.commit_one(x, epoch, one, out, 11, 3.0) == 2
    assert row_of(slab, x) == [4.0] * 4 and float(slab.last_access[x]) == 3.0
    assert slab.commit_one(x, epoch, one, out[:1], 12, 3.0) == 3  # T = 1
    np.testing.assert_array_equal(slab.answers.find(x, 2, 12, 1), out[:1])
    np.testing.assert_array_equal(slab.answers.find(x, 0, 11, 2), out)
    slab.reset(x, 4.0)
    assert slab.commit_one(x, epoch, one, np.full((1, 3), 9.0, np.float32), 13, 5.0) is None
    assert slab.answers.find(x, 0, 11, 2) is None  # a reset forgets what was kept
    assert row_of(slab, x) == [0.0] * 4 and int(slab.position[x]) == 0
    assert row_of(slab, y) == [7.0] * 4  # the neighbour was never touched
    # The views the one-step path reads are the slot's own state, in the model's layout.
    views = slab.views(y)
    assert [v.shape for v in views] == [(1, 3), (2, 1, 4), (2, 3, 1)]
    assert all(np.shares_memory(v, a) for v, a in zip(views, slab.states, strict=True))


@pytest.fixture(scope="module")
def lstm_64x2(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    """The benchmark's memory-scenario shape: LSTM, hidden 64, 2 layers."""
    root: Path = tmp_path_factory.mktemp("lstm64")
    export_shapes(root, {"lstm": ModelShape("lstm", 2, 1, 64, 1, True)}, seed=3)
    return ModelRegistry.load(root)


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_per_idle_session_within_the_design_bound(lstm_64x2: ModelRegistry) -> None:
    """Resident growth for 100k idle sessions <= 1.5 x raw state + 250 B per session.

    Also, apart from the slab, what Python allocates per session (record, id,
    index entry) stays within the 250 B: measured with tracemalloc, which sees
    only allocations made after it starts, i.e. not the slab's reservation.
    """
    n = 100_000
    raw = lstm_64x2.get("lstm").spec.state_bytes_per_session()
    assert raw == 1024

    async def main() -> tuple[float, float]:
        manager = SessionManager(lstm_64x2, CoreSettings(max_sessions=n), MemoryDirectory)
        await manager.start()
        try:
            gc.collect()
            rss = resident_bytes()
            for _ in range(n):
                manager.create("lstm", None, None, PRINCIPAL)
            resident = resident_bytes() - rss
            assert manager.session_count == n
        finally:
            await manager.stop(grace_s=1)
        # tracemalloc's own bookkeeping is resident too, so it gets its own manager;
        # traced from the first session, so container growth is counted as it builds.
        traced = n // 5
        manager = SessionManager(lstm_64x2, CoreSettings(max_sessions=traced), MemoryDirectory)
        await manager.start()
        try:
            tracemalloc.start()
            for _ in range(traced):
                manager.create("lstm", None, None, PRINCIPAL)
            python_side = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
        finally:
            await manager.stop(grace_s=1)
        return resident / n, python_side / traced

    resident, python_side = asyncio.run(main())
    assert resident <= 1.5 * raw + 250
    assert python_side <= 250
