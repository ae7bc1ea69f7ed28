"""Continuous batching of session steps for one model version.

Steps queue while ONNX Runtime runs; everything ready (up to `max_batch`
rows) forms the next round. A round groups its rows by T and makes one ONNX
Runtime call per distinct T (chunked by `max_batch`), all in one hop to a
dedicated worker thread so the event loop keeps serving. While one round runs
there, the next is gathered and queued behind it (at most MAX_OFFLOADED), so
the loop's gather and scatter overlap the model instead of alternating with
it. A round whose model calls are predicted to be shorter than that hop (a
single step of a small model: tens of microseconds) runs on the loop instead:
the hop's two thread wake-ups would cost more than they free.

Ordering: a request waits until every earlier request naming one of its
sessions has finished (service.work.Order), so a session has at most one
request in flight and its requests apply in call order; requests of different
sessions are taken in the order they became ready.

Commit rule: a step's state, position and last output are written only when
its model call succeeded and the session's slot epoch is unchanged since the
step was queued (no reset or close in between). A step succeeds (returns
outputs) exactly when its state was committed; otherwise it fails with a
status, and the session is left as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from service.errors import (
    FailedPrecondition,
    Internal,
    NotFound,
    ResourceExhausted,
    SeqServeError,
    Unavailable,
)
from service.runtime import LoadedModel
from service.settings import CoreSettings
from service.slab import Slab
from service.work import (
    ForecastResult,
    ForecastWork,
    GroupWork,
    Order,
    StepResult,
    StepWork,
    Unit,
    fail,
    rows,
    settle,
)

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Owner = TypeVar("Owner")

INLINE_S = 50e-6
# Rounds handed to the worker and not yet finished: one running, one gathered and
# queued behind it. More would freeze small rounds early instead of letting
# steps pile up into a bigger next one.
MAX_OFFLOADED = 2


@dataclass
class _Bucket:
    """Rows of one T in a round: single steps first, then group parts."""

    steps: list[StepWork] = field(default_factory=list)
    parts: list[tuple[GroupWork, I64]] = field(default_factory=list)  # group, its item indices
    rows: int = 0


@dataclass
class _Call:
    """One ONNX Runtime call prepared on the loop, run in the worker."""

    x: F32  # (B, T, F)
    states: list[F32]  # model layout, batch B


# A bucket's T, the bucket, its slots (B,) in row order, and (first call, end call,
# the slots' epochs (B,) when gathered): which of the round's calls serve it.
_Planned = tuple[int, _Bucket, I64, tuple[int, int, npt.NDArray[np.uint32]]]


@dataclass
class _Rollout:
    """A forecast prepared on the loop: the last output and a copy of the state."""

    last: F32  # (O,)
    states: list[F32]  # model layout, batch 1
    position: int
    horizon: int


@dataclass
class _Round:
    buckets: dict[int, _Bucket] = field(default_factory=dict)
    forecasts: list[ForecastWork] = field(default_factory=list)
    groups: list[GroupWork] = field(default_factory=list)
    taken: list[Unit] = field(default_factory=list)  # every unit that entered the round


class Batcher(Generic[Owner]):
    """The queue and the round loop of one model version."""

    def __init__(
        self,
        model: LoadedModel,
        slab: Slab[Owner],
        settings: CoreSettings,
        clock: Callable[[], float],
    ) -> None:
        self.model = model
        self.slab = slab
        self._max_batch = settings.max_batch
        self._max_queue = settings.max_queue
        self._delay_s = settings.batch_delay_us / 1e6
        self._clock = clock
        self._axes = [st.batch_axis for st in model.spec.states]
        self._order = Order()
        self._ready: deque[Unit] = deque()  # units no earlier unit holds back, in order
        self._queued = 0  # rows submitted and not yet taken into a round
        self._accepting = False
        self._task: asyncio.Task[None] | None = None
        self._offloads: set[asyncio.Task[None]] = set()  # rounds in the worker thread
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        # A round predicted to take less than a hop to the worker thread and back
        # (two thread wake-ups, ~50 us measured on 2 busy cores) runs on the loop.
        self.inline_s = INLINE_S
        # Figures for metrics and the benchmark.
        self.offloaded = 0  # rounds run in the worker thread
        self.rounds = 0
        self.calls = 0
        self.rows = 0

    @property
    def queued(self) -> int:
        return self._queued

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        # Created here so that they belong to the running loop.
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"ort-{self.model.label}")
        self._accepting = True
        self._task = asyncio.create_task(self._loop(), name=f"batcher {self.model.label}")
        self._task.add_done_callback(self._task_done)

    def stop_accepting(self) -> None:
        self._accepting = False

    async def stop(self, grace_s: float) -> None:
        """Refuse new work, let submitted work finish within `grace_s`, fail the rest."""
        self._accepting = False
        if self._idle is not None and not self._idle.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), max(grace_s, 0.0))
        for task in [self._task, *self._offloads]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = None
        gone = Unavailable(f"model {self.model.label}: the server is shutting down")
        for unit in list(self._order.unfinished):
            fail(unit.future, gone)
            self._order.done(unit)
        self._ready.clear()
        self._queued = 0
        if self._executor is not None:
            # A call still running finishes in the background; nothing waits on it.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("batcher %s stopped", self.model.label, exc_info=task.exception())

    # --- submission ------------------------------------------------------------

    def admit(self, n: int) -> None:
        """Raise unless `n` more rows may be queued now."""
        if not self._accepting:
            raise Unavailable(f"model {self.model.label}: the server is shutting down")
        if self._task is None or self._task.done():  # never started, or died (logged)
            raise Internal(f"model {self.model.label}: its batcher is not running")
        if self._queued + n > self._max_queue:
            raise ResourceExhausted(
                f"model {self.model.label}: queue full: {self._queued} steps waiting, "
                f"this request adds {n}, max_queue={self._max_queue}"
            )

    def submit(self, unit: Unit) -> None:
        """Queue a unit (its future is resolved later); refuse when stopping or full."""
        n = rows(unit)
        self.admit(n)
        self._queued += n
        assert self._wake is not None and self._idle is not None
        self._idle.clear()
        if self._order.add(unit):
            self._ready.append(unit)
            self._wake.set()

    def _done(self, unit: Unit) -> None:
        self._ready.extend(self._order.done(unit))

    # --- the loop ----------------------------------------------------------------

    async def _loop(self) -> None:
        assert self._wake is not None and self._idle is not None
        while True:
            while not self._ready or len(self._offloads) >= MAX_OFFLOADED:
                if not self._ready and not self._offloads:
                    # Nothing ready and nothing running means nothing unfinished: every
                    # waiting unit waits on one that is ready or running.
                    self._idle.set()
                self._wake.clear()
                await self._wake.wait()
            if self._delay_s > 0 and self._queued < self._max_batch:
                await asyncio.sleep(self._delay_s)
            rnd = _Round()
            handed_over = False
            try:
                self._assemble(rnd)
                if not self._single(rnd):
                    handed_over = self._general(rnd)
            except Exception as exc:
                self._fail_round(rnd, exc)
            finally:
                if not handed_over:
                    for unit in rnd.taken:
                        self._done(unit)
            if self._ready:
                await asyncio.sleep(0)  # back-to-back rounds still let others run

    def _fail_round(self, rnd: _Round, exc: Exception) -> None:
        rid = secrets.token_hex(6)
        log.error("model %s: batch failed (request id %s)", self.model.label, rid, exc_info=exc)
        err = Internal(
            f"model {self.model.label}: internal error in a batch "
            f"(request id {rid}): {type(exc).__name__}"
        )
        for unit in rnd.taken:
            fail(unit.future, err)

    def _general(self, rnd: _Round) -> bool:
        """Run any round: gather per T, compute, scatter; True when handed to the worker.

        A round predicted to be short runs here on the loop. A longer one goes to
        the worker thread in a task of its own, and the loop goes on assembling
        the next round meanwhile: ready units never share a session with a
        running round (service.work.Order), so the next round's gather reads
        settled state, and its model call queues right behind this one's.
        """
        calls, plan = self._prepare(rnd)
        forecasts = [self._prepare_forecast(w) for w in rnd.forecasts]
        if self._cost(calls, forecasts) <= self.inline_s:
            results, rollouts = self._compute(calls, forecasts)
            self._finish(rnd, plan, results, forecasts, rollouts)
            return False
        task = asyncio.create_task(self._offload(rnd, calls, plan, forecasts))
        self._offloads.add(task)
        task.add_done_callback(self._offloads.discard)
        self.offloaded += 1
        return True

    async def _offload(
        self, rnd: _Round, calls: list[_Call], plan: list[_Planned], forecasts: list[_Rollout]
    ) -> None:
        """A round in the worker thread; its units are done (and their successors ready) after."""
        assert self._wake is not None
        try:
            loop = asyncio.get_running_loop()
            results, rollouts = await loop.run_in_executor(
                self._executor, self._compute, calls, forecasts
            )
            self._finish(rnd, plan, results, forecasts, rollouts)
        except asyncio.CancelledError:
            gone = Unavailable(f"model {self.model.label}: the server is shutting down")
            for unit in rnd.taken:
                fail(unit.future, gone)
            raise
        except Exception as exc:
            self._fail_round(rnd, exc)
        finally:
            for unit in rnd.taken:
                self._done(unit)
            # Leave the set now, not in a done callback: the loop may wake before it runs.
            task = asyncio.current_task()
            if task is not None:
                self._offloads.discard(task)
            self._wake.set()

    def _assemble(self, rnd: _Round) -> None:
        """Take ready units, in order, until the round holds `max_batch` rows."""
        taken = 0
        while self._ready and taken < self._max_batch:
            w = self._ready.popleft()
            self._queued -= rows(w)
            if w.future.done():  # the caller went away before the round
                self._done(w)
                continue
            if isinstance(w, GroupWork):
                live = self._check_group(w)
                rnd.taken.append(w)
                rnd.groups.append(w)
                for t in np.unique(w.times[live]).tolist():
                    idx = live[w.times[live] == t]
                    bucket = rnd.buckets.setdefault(t, _Bucket())
                    bucket.parts.append((w, idx))
                    bucket.rows += len(idx)
                taken += len(live)
                continue
            err = self._check_one(w)
            if err is not None:
                fail(w.future, err)
                self._done(w)
                continue
            rnd.taken.append(w)
            if isinstance(w, ForecastWork):
                rnd.forecasts.append(w)
            else:
                bucket = rnd.buckets.setdefault(len(w.x), _Bucket())
                bucket.steps.append(w)
                bucket.rows += 1
            taken += 1

    def _single(self, rnd: _Round) -> bool:
        """Run a round of one short step on the loop, if that is what it is; True when done.

        The common round at low load. The generic path's bucketing, concatenation
        and take/put cost more than the model call here, so this one reads and
        writes the slot's state through views and a handful of scalar writes.
        """
        if len(rnd.taken) != 1 or len(rnd.buckets) != 1:
            return False
        w = rnd.taken[0]
        if not isinstance(w, StepWork):
            return False
        t = len(w.x)
        if self.model.estimate(t) > self.inline_s:
            return False
        slab, slot = self.slab, w.slot
        # The slot's state in model layout with B = 1: a view per state tensor.
        where = [(slice(None),) * axis + (slice(slot, slot + 1),) for axis in self._axes]
        self.rounds += 1
        self.calls += 1
        try:
            views = [a[i] for a, i in zip(slab.states, where, strict=True)]
            y, states = self.model.run(w.x[None], views)  # x (1, T, F)
        except Exception as exc:
            fail(w.future, self._internal(exc, 1))
        else:
            # Synchronous on the loop: no reset or close can come between the
            # check in _assemble and this write, so the epoch still holds.
            for a, i, new in zip(slab.states, where, states, strict=True):
                a[i] = new
            position = int(slab.position[slot]) + t
            slab.position[slot] = position
            slab.last_output[slot] = y[0, -1]  # (O,)
            slab.last_access[slot] = self._clock()
            self.rows += 1
            settle(w.future, StepResult(y[0], position))  # y[0] (T, O)
        return True

    def _stale(self, session_id: str, slot: int, owner: object, doing: str) -> SeqServeError:
        if self.slab.owners[slot] is owner:
            return FailedPrecondition(
                f"session {session_id!r} was reset while this step was {doing}; "
                "the step was not applied"
            )
        return NotFound(f"session {session_id!r} was closed or expired while this step was {doing}")

    def _check_one(self, w: StepWork | ForecastWork) -> SeqServeError | None:
        slab = self.slab
        if int(slab.epoch[w.slot]) != w.epoch:
            return self._stale(w.session_id, w.slot, w.owner, "queued")
        position = int(slab.position[w.slot])
        if isinstance(w, ForecastWork):
            if position == 0:
                return FailedPrecondition(
                    f"session {w.session_id!r} has no step yet: a forecast starts from the "
                    "prediction of the last step (expected position >= 1, got 0)"
                )
        elif w.expected is not None and w.expected != position:
            return FailedPrecondition(
                f"session {w.session_id!r}: expected position {w.expected}, "
                f"but the session is at position {position}"
            )
        return None

    def _check_group(self, w: GroupWork) -> I64:
        """Fail the group's items whose session changed since submission; the live indices."""
        stale = np.flatnonzero(self.slab.epoch[w.slots] != w.epochs)
        for i in stale.tolist():
            w.fail(i, self._stale(w.session_ids[i], w.slot_list[i], w.owners[i], "queued"))
        if len(stale) == 0:
            return np.arange(len(w.slots), dtype=np.int64)
        mask = np.ones(len(w.slots), bool)
        mask[stale] = False
        return np.flatnonzero(mask).astype(np.int64)

    # --- gather, compute, scatter ----------------------------------------------------

    def _prepare(self, rnd: _Round) -> tuple[list[_Call], list[_Planned]]:
        """Gather inputs and states per T; the plan says which calls serve which bucket."""
        f = self.model.spec.input_size
        calls: list[_Call] = []
        plan: list[_Planned] = []
        for t, bucket in rnd.buckets.items():
            slot_parts: list[I64] = []
            x_parts: list[F32] = []
            if bucket.steps:
                slot_parts.append(np.fromiter((w.slot for w in bucket.steps), np.int64))
                x_parts.append(np.stack([w.x for w in bucket.steps]))  # (n, T, F)
            for g, idx in bucket.parts:
                if len(idx) == len(g.slots):  # the whole group has this T: values as they are
                    slot_parts.append(g.slots)
                    x_parts.append(g.x.reshape(len(idx), t, f))
                    continue
                slot_parts.append(g.slots[idx])
                # Each item's values start at its input offset: (n, T * F) -> (n, T, F)
                cols = g.in_offsets[idx, None] + np.arange(t * f)[None, :]
                x_parts.append(g.x[cols].reshape(len(idx), t, f))
            slots = np.concatenate(slot_parts) if len(slot_parts) > 1 else slot_parts[0]
            x = np.concatenate(x_parts) if len(x_parts) > 1 else x_parts[0]  # (B, T, F)
            epochs = self.slab.epoch[slots]  # compared again when the call returns
            first = len(calls)
            for a in range(0, len(slots), self._max_batch):
                chunk = slots[a : a + self._max_batch]
                calls.append(
                    _Call(np.ascontiguousarray(x[a : a + len(chunk)]), self.slab.gather(chunk))
                )
            plan.append((t, bucket, slots, (first, len(calls), epochs)))
        return calls, plan

    def _cost(self, calls: list[_Call], forecasts: list[_Rollout]) -> float:
        """Predicted seconds of the round's model calls."""
        row_steps = sum(c.x.shape[0] * c.x.shape[1] for c in calls)
        steps = sum(f.horizon - 1 for f in forecasts)  # each a call of one row
        return self.model.estimate(row_steps + steps, len(calls) + steps)

    def _prepare_forecast(self, w: ForecastWork) -> _Rollout:
        slot = np.array([w.slot], np.int64)
        last = self.slab.last_output[w.slot].copy()  # (O,)
        return _Rollout(last, self.slab.gather(slot), int(self.slab.position[w.slot]), w.horizon)

    def _compute(
        self, calls: list[_Call], forecasts: list[_Rollout]
    ) -> tuple[list[tuple[F32, list[F32]] | BaseException], list[F32 | BaseException]]:
        """Worker thread: every model call of a round; failures are returned, not raised."""
        run = self.model.run
        results: list[tuple[F32, list[F32]] | BaseException] = []
        for c in calls:
            try:
                results.append(run(c.x, c.states))
            except Exception as exc:
                results.append(exc)
        rollouts: list[F32 | BaseException] = []
        for f in forecasts:
            try:
                rollouts.append(self._rollout(f.last, f.states, f.horizon))
            except Exception as exc:
                rollouts.append(exc)
        return results, rollouts

    def _rollout(self, last: F32, states: list[F32], horizon: int) -> F32:
        """Feed each prediction back as the next input, from a copy of the state."""
        o = len(last)
        out = np.empty((horizon, o), np.float32)  # (H, O)
        out[0] = last
        for h in range(1, horizon):
            y, states = self.model.run(out[h - 1].reshape(1, 1, o), states)  # y (1, 1, O)
            out[h] = y[0, -1]
        return out

    def _finish(
        self,
        rnd: _Round,
        plan: list[_Planned],
        results: list[tuple[F32, list[F32]] | BaseException],
        forecasts: list[_Rollout],
        rollouts: list[F32 | BaseException],
    ) -> None:
        now = self._clock()
        slab = self.slab
        axes = [s.batch_axis for s in self.model.spec.states]
        if results or rollouts:
            self.rounds += 1
            self.calls += len(results)
        for t, bucket, slots, (first, end, epochs) in plan:
            got = results[first:end]
            failed = next((r for r in got if isinstance(r, BaseException)), None)
            if failed is not None:
                self._fail_bucket(bucket, failed, len(slots))
                continue
            outs = [r for r in got if not isinstance(r, BaseException)]
            y = outs[0][0] if len(outs) == 1 else np.concatenate([r[0] for r in outs])  # (B, T, O)
            states = (
                outs[0][1]
                if len(outs) == 1
                else [np.concatenate([r[1][k] for r in outs], axis=ax) for k, ax in enumerate(axes)]
            )
            valid = slab.epoch[slots] == epochs  # (B,) no reset or close while running
            if valid.all():
                keep, last = slots, y[:, -1]  # last (B, O)
            else:
                kept = np.flatnonzero(valid)
                keep, last = slots[kept], y[kept, -1]  # last (B', O)
                states = slab.select(states, kept)
            slab.scatter(keep, states)
            slab.position[keep] += t
            slab.last_output[keep] = last
            slab.last_access[keep] = now
            self.rows += len(slots)
            self._deliver(bucket, y, valid, t)
        for w, prepared, outcome in zip(rnd.forecasts, forecasts, rollouts, strict=True):
            if isinstance(outcome, BaseException):
                fail(w.future, self._internal(outcome, 1))
            else:
                slab.last_access[w.slot] = now
                settle(w.future, ForecastResult(outcome, prepared.position))
        for g in rnd.groups:
            settle(g.future, g)

    def _deliver(self, bucket: _Bucket, y: F32, valid: npt.NDArray[np.bool_], t: int) -> None:
        """Hand each row's outputs to its work: y (B, T, O), rows in bucket order."""
        slab = self.slab
        o = y.shape[2]
        row = 0
        for w in bucket.steps:
            if valid[row]:
                settle(w.future, StepResult(y[row], int(slab.position[w.slot])))
            else:
                fail(w.future, self._stale(w.session_id, w.slot, w.owner, "running"))
            row += 1
        for g, idx in bucket.parts:
            n = len(idx)
            ok = valid[row : row + n]
            if n == len(g.slots):  # the whole group: its outputs are these rows, in order
                g.outputs[:] = y[row : row + n].reshape(-1)  # (n * T * O,)
                g.ok[:] = ok
                g.positions[:] = slab.position[g.slots]
            else:
                # Item outputs land at their output offsets: (n, T * O)
                cols = g.out_offsets[idx, None] + np.arange(t * o)[None, :]
                g.outputs[cols] = y[row : row + n].reshape(n, t * o)
                g.ok[idx] = ok
                g.positions[idx] = slab.position[g.slots[idx]]
            if not ok.all():
                for i in idx[~ok].tolist():
                    g.fail(i, self._stale(g.session_ids[i], g.slot_list[i], g.owners[i], "running"))
            row += n

    def _internal(self, exc: BaseException, rows: int) -> Internal:
        rid = secrets.token_hex(6)
        log.error(
            "model %s: model call failed on %d rows (request id %s)",
            self.model.label,
            rows,
            rid,
            exc_info=exc,
        )
        return Internal(
            f"model {self.model.label}: the model call failed "
            f"({type(exc).__name__}; request id {rid}, see the server log)"
        )

    def _fail_bucket(self, bucket: _Bucket, exc: BaseException, rows: int) -> None:
        err = self._internal(exc, rows)
        for w in bucket.steps:
            fail(w.future, err)
        for g, idx in bucket.parts:
            for i in idx.tolist():
                g.fail(i, err)
