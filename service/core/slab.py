"""Per-model-version state slab: every session's recurrent state in a few arrays.

One float32 array per state tensor, laid out exactly as the model takes it
(the spec's shape with the batch axis stretched to the slab's capacity), so
gathering a batch is one `np.take` per state tensor whose result is already
the contiguous ONNX Runtime input, and scattering is one indexed assignment.
(Storing sessions first and transposing was measured ~2x slower to gather at
batch 1024.) Beside the states, per-slot columns hold what the server keeps per
session so that no per-session numpy object exists: the last output (the
prediction of the next input, for forecast), the position, the last access
time, and an epoch that changes whenever the slot's state is replaced by
something other than a step (reset, free, reuse), so a step that was queued or
running across such a change is recognised and never writes stale state.

One writer: session state changes only through this class's methods. `commit`
(a batch of rows) and `commit_one` (the one-step path) are the single moment a
step becomes applied: state, last output, position, last access and the
request's answer (kept for retries, seqserve.core.answers) are written for the
rows whose epoch still holds, and only those. `alloc`, `reset` and `free`
replace a slot's state and change its epoch; `touch` marks activity for the
idle timeout. Every change but `touch` marks the slot dirty: a durable store's
checkpoint writes dirty slots and clears the mark. The arrays are public for
reading.

Capacity: the session manager reserves room for `max_sessions` up front. The
arrays are allocated zeroed (fresh pages from the kernel), and a page becomes
resident only when a session first writes to it; slots are handed out densely
from 0 and freed slots are reused first, so resident memory tracks the
sessions open, not the reservation. A reserved slab never copies itself to
grow: copying a million sessions' state was measured to stall the event loop
for over a second. A slab that outgrows its reservation (only one built with a
small one) grows geometrically by a modest factor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from seqserve.core.answers import U64, Answers, grow_rows
from seqserve.core.spec import ModelSpec

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

Owner = TypeVar("Owner")

# A state array seen as rows: (2-D view, row offsets (lead, 1), shape before and
# after the batch axis).
_RowView = tuple[F32, I64, tuple[int, ...], tuple[int, ...]]

GROWTH = 1.25
INITIAL_CAPACITY = 64
MOVED_KEPT = 10_000  # ids of dropped copies remembered, for the message of their queued steps


class Slab(Generic[Owner]):
    """Slots for the sessions of one model version."""

    def __init__(
        self, spec: ModelSpec, reserve: int = INITIAL_CAPACITY, growth: float = GROWTH
    ) -> None:
        if reserve < 1 or growth <= 1.0:
            raise ValueError(f"expected reserve >= 1 and growth > 1, got {reserve}, {growth}")
        self.spec = spec
        self._growth = growth
        self._axes = [s.batch_axis for s in spec.states]
        self._leads = [(slice(None),) * axis for axis in self._axes]  # index up to the batch axis
        self.capacity = 0
        self.used = 0  # slots holding a session
        self._next = 0  # slots below this have been handed out at least once
        self._free: list[int] = []
        self.owners: list[Owner | None] = []  # by slot, up to the high-water mark
        self.states: list[F32] = [self._state_array(i, 0) for i in range(len(spec.states))]
        self._rows: list[_RowView] = []
        self.last_output = np.zeros((0, spec.output_size), np.float32)  # (N, O)
        self.position = np.zeros(0, np.int64)  # (N,) steps consumed
        self.last_access = np.zeros(0, np.float64)  # (N,) clock seconds
        self.epoch = np.zeros(0, np.uint32)  # (N,) bumped on reset, free and reuse
        self.dirty = np.zeros(0, bool)  # (N,) changed since a durable store's last checkpoint
        self.answers = Answers(spec.output_size)
        # Ids of sessions whose copy was dropped because a shared store holds a newer one
        # (seqserve.core.sharing): their steps still queued fail as retryable. Bounded.
        self.moved: dict[str, None] = {}
        try:
            self._resize(reserve)
        except MemoryError:  # address space limited (ulimit -v, strict overcommit): grow instead
            self._resize(min(reserve, INITIAL_CAPACITY))

    # --- slots -------------------------------------------------------------

    def alloc(self, now: float, owner: Owner | None = None) -> int:
        """A zeroed slot for a new session (its owner may be set in `owners` afterwards)."""
        if self._free:
            slot = self._free.pop()
        else:
            if self._next == self.capacity:
                self._resize(max(self.capacity + 1, int(self.capacity * self._growth)))
            slot = self._next
            self._next += 1
            self.owners.append(None)
        self.used += 1
        self.owners[slot] = owner
        self._zero(slot)
        self.last_access[slot] = now
        return slot

    def free(self, slot: int) -> None:
        """Give a slot back; a step still running on it will not write its state."""
        self.owners[slot] = None
        self.epoch[slot] += 1
        self.last_access[slot] = np.inf  # never an eviction candidate
        self._free.append(slot)
        self.used -= 1

    def mark_moved(self, session_id: str) -> None:
        self.moved[session_id] = None
        if len(self.moved) > MOVED_KEPT:
            del self.moved[next(iter(self.moved))]  # the oldest

    def reset(self, slot: int, now: float) -> None:
        """Zero state and position; a step still running on it will not write its state."""
        self._zero(slot)
        self.last_access[slot] = now

    def touch(self, slots: int | I64, now: float) -> None:
        """Mark activity (a step submitted, a forecast made) for the idle timeout."""
        self.last_access[slots] = now

    def _zero(self, slot: int) -> None:
        for axis, arr in zip(self._axes, self.states, strict=True):
            arr[(slice(None),) * axis + (slot,)] = 0.0
        self.last_output[slot] = 0.0
        self.position[slot] = 0
        self.epoch[slot] += 1
        self.dirty[slot] = True
        self.answers.clear(slot)

    # --- batches -----------------------------------------------------------

    # Gather and scatter index whole rows of a 2-D view of each state array: the
    # axes before the batch axis times the capacity, by the axes after it. For
    # (L, N, H) that is (L * N, H) and rows l * N + slot; numpy copies such rows
    # with one memcpy each, where indexing the middle axis of the 3-D array
    # walks an iterator (measured 1.5x slower to scatter at B=1024). The views
    # and row offsets are made once per capacity, in _resize.

    def gather(self, slots: I64) -> list[F32]:
        """Copies of the states of `slots`, in the model's layout with B = len(slots)."""
        out: list[F32] = []
        for flat, offsets, before, after in self._rows:
            rows = (offsets + slots).reshape(-1)  # (lead * B,) in layout order
            out.append(flat.take(rows, axis=0).reshape(*before, len(slots), *after))
        return out

    def scatter(self, slots: I64, states: Sequence[F32]) -> None:
        """Write the states of a batch (model layout, B = len(slots)) back to `slots`."""
        for (flat, offsets, _, _), new in zip(self._rows, states, strict=True):
            rows = (offsets + slots).reshape(-1)  # (lead * B,)
            flat[rows] = new.reshape(len(rows), flat.shape[1])

    def views(self, slot: int) -> list[F32]:
        """The slot's states in the model's layout with B = 1, as views (no copy)."""
        at = (slice(slot, slot + 1),)
        return [a[lead + at] for lead, a in zip(self._leads, self.states, strict=True)]

    # --- the commit: the one moment a step is applied ---------------------------------

    def commit(
        self,
        slots: I64,
        epochs: npt.NDArray[np.uint32],
        states: Sequence[F32],
        y: F32,
        digests: U64,
        now: float,
    ) -> npt.NDArray[np.bool_]:
        """Apply a round's rows whose slot is unchanged since they were queued.

        slots and epochs (B,) as they were when the rows were taken; states in
        the model's layout with batch B; y (B, T, O) the rows' outputs, each row
        T steps; digests (B,) of the rows' values (seqserve.core.answers). Rows
        whose epoch changed meanwhile (a reset or a close) are left alone.
        Returns which rows were applied (B,).
        """
        applied: npt.NDArray[np.bool_] = self.epoch[slots] == epochs  # (B,)
        if not applied.all():
            rows = np.flatnonzero(applied)
            slots, y, digests = slots[rows], y[rows], digests[rows]  # B' rows
            states = [np.take(s, rows, axis=ax) for ax, s in zip(self._axes, states, strict=True)]
        self.scatter(slots, states)
        self.answers.record(slots, self.position[slots], digests, y)
        self.position[slots] += y.shape[1]
        self.last_output[slots] = y[:, -1]  # (B, O)
        self.last_access[slots] = now
        self.dirty[slots] = True
        return applied

    def commit_one(
        self, slot: int, epoch: int, states: Sequence[F32], y: F32, digest: int, now: float
    ) -> int | None:
        """`commit` for one session (states with B = 1, y (T, O)): its new position, or None."""
        if int(self.epoch[slot]) != epoch:
            return None
        at = (slice(slot, slot + 1),)
        for lead, a, new in zip(self._leads, self.states, states, strict=True):
            a[lead + at] = new
        start = int(self.position[slot])
        self.answers.record_one(slot, start, digest, y)
        position = start + len(y)
        self.position[slot] = position
        self.last_output[slot] = y[-1]
        self.last_access[slot] = now
        self.dirty[slot] = True
        return position

    # --- one slot whole: checkpoints, recovery, export and import --------------------

    def state_of(self, slot: int) -> F32:
        """The slot's state tensors' values, in spec order, flattened: (S,)."""
        at = (slot,)
        return np.concatenate(
            [a[lead + at].reshape(-1) for lead, a in zip(self._leads, self.states, strict=True)]
        )

    def states_of(self, slots: I64) -> F32:
        """`state_of` for many slots: (len(slots), S), row i that of slots[i]."""
        n = len(slots)
        # Each state in model layout (.., n, ..) -> session-major (n, per-session values)
        parts = [
            np.moveaxis(g, axis, 0).reshape(n, -1)
            for g, axis in zip(self.gather(slots), self._axes, strict=True)
        ]
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def load(self, slot: int, state: F32, position: int, last_output: F32, now: float) -> None:
        """Replace a slot's state (S,) and columns, as a reset does (the epoch changes)."""
        self._zero(slot)
        where, at = (slot,), 0
        for lead, a, s in zip(self._leads, self.states, self.spec.states, strict=True):
            size = s.per_session_size()
            a[lead + where] = state[at : at + size].reshape(s.per_session_shape())
            at += size
        self.position[slot] = position
        self.last_output[slot] = last_output
        self.last_access[slot] = now

    def dirty_slots(self) -> I64:
        """Slots changed since the last `clean` (free slots included: their owner is None)."""
        return np.flatnonzero(self.dirty[: self._next]).astype(np.int64)

    def clean(self, slots: I64) -> None:
        self.dirty[slots] = False

    # --- accounting ----------------------------------------------------------

    def bytes_per_slot(self) -> int:
        """Bytes one session occupies across every array of the slab."""
        kept = self.answers
        columns: list[npt.NDArray[Any]] = [self.last_output, self.position, self.last_access]
        answers: list[npt.NDArray[Any]] = [kept.starts, kept.digests, kept.outputs, kept.count]
        arrays: list[npt.NDArray[Any]] = [*self.states, *columns, self.epoch, self.dirty, *answers]
        return sum(a.nbytes for a in arrays) // max(self.capacity, 1)

    def used_bytes(self) -> int:
        """Bytes of the slots holding a session."""
        return self.bytes_per_slot() * self.used

    def idle_since(self, cutoff: float) -> I64:
        """Slots of sessions last touched before `cutoff` (free slots never qualify)."""
        return np.flatnonzero(self.last_access[: self._next] < cutoff).astype(np.int64)

    # --- growth ----------------------------------------------------------------

    def _state_array(self, index: int, capacity: int) -> F32:
        s = self.spec.states[index]
        shape = tuple(capacity if i == s.batch_axis else d for i, d in enumerate(s.shape))
        return np.zeros(shape, np.float32)

    @staticmethod
    def _row_view(arr: F32, axis: int) -> _RowView:
        """A state array as rows (see gather): its 2-D view, row offsets, outer shapes."""
        before, after = arr.shape[:axis], arr.shape[axis + 1 :]
        lead = int(np.prod(before, dtype=np.int64))
        width = int(np.prod(after, dtype=np.int64))
        cap = arr.shape[axis]
        flat = arr.reshape(lead * cap, width)  # a view: np.zeros made it contiguous
        offsets = np.arange(lead, dtype=np.int64)[:, None] * cap  # (lead, 1)
        return flat, offsets, before, after

    def _resize(self, capacity: int) -> None:
        old = self.capacity
        grown: list[F32] = []
        for i, (axis, arr) in enumerate(zip(self._axes, self.states, strict=True)):
            new = self._state_array(i, capacity)
            new[(slice(None),) * axis + (slice(0, old),)] = arr
            grown.append(new)
        self.states = grown
        self._rows = [
            self._row_view(arr, axis) for arr, axis in zip(grown, self._axes, strict=True)
        ]
        self.last_output = grow_rows(self.last_output, capacity)
        self.position = grow_rows(self.position, capacity)
        self.last_access = grow_rows(self.last_access, capacity)
        self.epoch = grow_rows(self.epoch, capacity)
        self.dirty = grow_rows(self.dirty, capacity)
        self.answers.resize(capacity)
        self.capacity = capacity
