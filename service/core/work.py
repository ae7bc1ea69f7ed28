"""Units of work a batcher runs, and the per-session order between them.

A unit is a single session's request (T steps, or a forecast) or a group: one
batch request's items of one model version, sharing one future. `Order` keeps
each session's units in submission order without rescanning queues: a unit
waits on the last unfinished unit of each of its sessions and becomes ready
when all of those have finished, so at most one unit per session is ever ready
or running and a deep pipeline of one session costs O(1) per unit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from seqserve.core.errors import SeqServeError, Unavailable

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


class Reply(Protocol[T_contra]):
    """Where a unit's outcome goes: an asyncio.Future, or a stream's own reply slot.

    The batcher settles it synchronously inside its round, so a stream can
    write its answer without a task and a loop hop per step. `done()` true
    before the round means the caller went away: the unit is skipped.
    """

    def done(self) -> bool: ...

    def set_result(self, result: T_contra, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


@dataclass(frozen=True, slots=True)
class StepResult:
    outputs: F32  # (T, O)
    position: int  # the session's position after the step


@dataclass(frozen=True, slots=True)
class ForecastResult:
    outputs: F32  # (horizon, O)
    position: int  # the session's (unchanged) position


class _Unit:
    """What Order keeps on every unit: the units waiting on it and how many it waits on.

    Order also asks each unit for its `slot_keys()`; it takes the closed union
    `Unit`, so the type checker holds every kind to defining them.
    """

    __slots__ = ("blockers", "dependents")

    def __init__(self) -> None:
        self.blockers = 0
        self.dependents: list[Unit] | None = None


class _OneSession(_Unit):
    """A unit of one session: whose it is, which slot, and the slot's epoch at submission."""

    __slots__ = ("epoch", "owner", "session_id", "slot")

    def __init__(self, owner: object, session_id: str, slot: int, epoch: int) -> None:
        super().__init__()
        self.owner = owner
        self.session_id = session_id
        self.slot = slot
        self.epoch = epoch

    def slot_keys(self) -> Sequence[int]:
        return (self.slot,)


class StepWork(_OneSession):
    """One session's request of T steps (the stream and unary paths)."""

    __slots__ = ("expected", "future", "x")

    def __init__(
        self,
        owner: object,
        session_id: str,
        slot: int,
        epoch: int,
        x: F32,
        expected: int | None,
        future: Reply[StepResult],
    ) -> None:
        super().__init__(owner, session_id, slot, epoch)
        self.x = x  # (T, F)
        self.expected = expected  # position the client expects, or None
        self.future = future


class ForecastWork(_OneSession):
    """A rollout from one session's state; reads it, never writes it."""

    __slots__ = ("future", "horizon")

    def __init__(
        self,
        owner: object,
        session_id: str,
        slot: int,
        epoch: int,
        horizon: int,
        future: Reply[ForecastResult],
    ) -> None:
        super().__init__(owner, session_id, slot, epoch)
        self.horizon = horizon
        self.future = future


class GroupWork(_Unit):
    """Steps of many distinct sessions from one batch request, with one future.

    The batcher fills the result columns in place and resolves `future` with
    the group itself.
    """

    __slots__ = (
        "epochs",
        "errors",
        "expected",
        "future",
        "in_offsets",
        "input_size",
        "ok",
        "out_offsets",
        "outputs",
        "owners",
        "positions",
        "session_ids",
        "slot_list",
        "slots",
        "times",
        "x",
    )

    def __init__(
        self,
        owners: Sequence[object],
        session_ids: Sequence[str],
        slots: I64,
        epochs: npt.NDArray[np.uint32],
        times: I64,
        x: F32,
        input_size: int,
        output_size: int,
        future: asyncio.Future[GroupWork],
        expected: I64 | None = None,
    ) -> None:
        super().__init__()
        n = len(slots)
        self.owners = owners
        self.session_ids = session_ids
        self.slots = slots  # (n,)
        self.slot_list: list[int] = slots.tolist()
        self.epochs = epochs  # (n,)
        self.times = times  # (n,)
        self.x = x  # (sum(times) * F,) time-major per item
        self.input_size = input_size
        self.in_offsets = (np.cumsum(times) - times) * input_size  # (n,)
        self.out_offsets = (np.cumsum(times) - times) * output_size  # (n,)
        self.outputs = np.zeros(int(times.sum()) * output_size, np.float32)
        self.ok = np.zeros(n, bool)
        self.positions = np.zeros(n, np.int64)
        self.errors: list[tuple[int, SeqServeError]] = []
        self.future = future
        self.expected = expected  # (n,) the positions the client expects, or None

    def slot_keys(self) -> Sequence[int]:
        return self.slot_list

    def fail(self, i: int, err: SeqServeError) -> None:
        self.ok[i] = False
        self.errors.append((i, err))


Unit = StepWork | ForecastWork | GroupWork


def distinct(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """np.unique, with the common case (one value, or none) at the cost of two reductions."""
    if len(values) == 0 or values.min() == values.max():
        return values[:1]
    return np.unique(values)


def rows(unit: Unit) -> int:
    return len(unit.slots) if isinstance(unit, GroupWork) else 1


def settle(fut: Reply[T], value: T) -> None:
    if not fut.done():
        fut.set_result(value)


def fail(fut: Reply[Any], err: BaseException) -> None:
    if not fut.done():
        fut.set_exception(err)


def all_of(futures: list[asyncio.Future[None]]) -> asyncio.Future[None] | None:
    """One future for many: done when all are, failed with the first failure (None: none)."""
    pending = [f for f in futures if not (f.done() and not f.cancelled() and f.exception() is None)]
    if len(pending) <= 1:
        return pending[0] if pending else None
    combined: asyncio.Future[None] = pending[0].get_loop().create_future()
    left = len(pending)

    def one_done(f: asyncio.Future[None]) -> None:
        nonlocal left
        left -= 1
        if combined.done():
            return
        if f.cancelled():
            combined.cancel()
        elif f.exception() is not None:
            combined.set_exception(f.exception())  # type: ignore[arg-type]
        elif left == 0:
            combined.set_result(None)

    for f in pending:
        f.add_done_callback(one_done)
    return combined


class Deliveries:
    """Replies that may be sent once what they answer is durable (at once without a store).

    A round collects its answers here; they go when the journal records of
    that round are durable, or fail with the journal's error if they cannot
    be. Failures of steps that were not applied need no record and go at once.
    """

    __slots__ = ("ok",)

    def __init__(self) -> None:
        self.ok: list[tuple[Reply[Any], object]] = []

    def add(self, reply: Reply[Any], value: object) -> None:
        self.ok.append((reply, value))

    def send_after(self, durable: asyncio.Future[None] | None) -> None:
        if durable is None:
            self._send(None)
        elif durable.done():
            self._send(durable)
        else:
            durable.add_done_callback(self._send)

    def _send(self, durable: asyncio.Future[None] | None) -> None:
        err: BaseException | None = None
        if durable is not None:
            cancelled = durable.cancelled()
            err = Unavailable("the server is shutting down") if cancelled else durable.exception()
        for reply, value in self.ok:
            if err is None:
                settle(reply, value)
            else:
                fail(reply, err)


class Order:
    """Per-slot submission order: which units may run now."""

    def __init__(self) -> None:
        self._tail: dict[int, Unit] = {}  # slot -> its last unfinished unit
        self.unfinished: dict[Unit, None] = {}  # every unit added and not yet done, in order

    def add(self, unit: Unit) -> bool:
        """Register a unit; True when it may run now (no earlier unit shares a slot)."""
        tail = self._tail
        blockers = 0
        for slot in unit.slot_keys():
            prev = tail.get(slot)
            if prev is not None:
                deps = prev.dependents
                if deps is None:
                    prev.dependents = [unit]
                    blockers += 1
                elif deps[-1] is not unit:  # a group may meet one unit on many slots
                    deps.append(unit)
                    blockers += 1
            tail[slot] = unit
        unit.blockers = blockers
        self.unfinished[unit] = None
        return blockers == 0

    def last(self, slot: int) -> Unit | None:
        """The last unfinished unit on `slot`, which a unit added now would wait for."""
        return self._tail.get(slot)

    def done(self, unit: Unit) -> list[Unit]:
        """Mark a unit finished (exactly once); the units that may run now because of it."""
        tail = self._tail
        for slot in unit.slot_keys():
            if tail.get(slot) is unit:
                del tail[slot]
        del self.unfinished[unit]
        ready: list[Unit] = []
        for d in unit.dependents or ():
            d.blockers -= 1
            if d.blockers == 0:
                ready.append(d)
        unit.dependents = None
        return ready
