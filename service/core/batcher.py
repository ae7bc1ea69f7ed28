"""Continuous batching of session steps for one model version.

Steps queue while ONNX Runtime runs; everything ready (up to `max_batch`
rows) forms the next round. A round groups its rows by T and makes one ONNX
Runtime call per distinct T (chunked by `max_batch`), all in one hop to a
dedicated worker thread so the event loop keeps serving. While one round runs
there, the next is gathered and queued behind it (at most MAX_OFFLOADED), so
the loop's gather and scatter overlap the model instead of alternating with
it. A round whose model calls are predicted to be shorter than that hop (a
single step of a small model: tens of microseconds) runs on the loop instead:
the hop's two thread wake-ups would cost more than they free. The arithmetic
of a round (gather, model call, scatter, and the commit rule) is in
seqserve.core.rounds.

Ordering: a request waits until every earlier request naming one of its
sessions has finished (seqserve.core.work.Order), so a session has at most one
request in flight and its requests apply in call order; requests of different
sessions are taken in the order they became ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from seqserve.core.checks import check_group, check_one
from seqserve.core.errors import Internal, ResourceExhausted, Unavailable, internal
from seqserve.core.journal import RoundLog
from seqserve.core.rounds import Bucket, Call, Computed, Planned, Rollout, Round, RoundRunner
from seqserve.core.runtime import LoadedModel
from seqserve.core.settings import CoreSettings
from seqserve.core.slab import Slab
from seqserve.core.work import (
    ForecastWork,
    GroupWork,
    Order,
    StepResult,
    StepWork,
    Unit,
    distinct,
    fail,
    rows,
)

log = logging.getLogger(__name__)

Owner = TypeVar("Owner")

# Rounds handed to the worker and not yet finished: one running, one gathered and
# queued behind it. More would freeze small rounds early instead of letting
# steps pile up into a bigger next one.
MAX_OFFLOADED = 2


@dataclass(eq=False)
class _Handed:
    """A round in the worker thread, and what finishing it needs."""

    round: Round
    plan: list[Planned]
    forecasts: list[Rollout]
    calls: list[Call]
    abandoned: bool = False  # stop() failed its units; its result is dropped
    # A round of one step only: the position it leaves its session at, and the
    # round chained to it.
    after: int | None = None
    chained_to: _Handed | None = None
    after_committed: bool = False  # a chained round: whether the one before it committed


class Batcher(Generic[Owner]):
    """The queue of one model version, and when and where its rounds run."""

    def __init__(
        self,
        model: LoadedModel,
        slab: Slab[Owner],
        settings: CoreSettings,
        clock: Callable[[], float],
        journal: RoundLog | None = None,
    ) -> None:
        self.model = model
        self.slab = slab
        self.runner = RoundRunner(model, slab, settings.max_batch, clock, journal)
        self._max_batch = settings.max_batch
        self._max_queue = settings.max_queue
        self._delay_s = settings.batch_delay_us / 1e6
        self._order = Order()
        self._ready: deque[Unit] = deque()  # units no earlier unit holds back, in order
        self._queued = 0  # rows submitted and not yet taken into a round
        self._accepting = False
        self._running = False  # between start() and the end of stop()
        self._kick_due: asyncio.Handle | asyncio.TimerHandle | None = None  # the next _kick
        self._offloads: set[_Handed] = set()  # rounds in the worker thread
        self._solo: dict[StepWork, _Handed] = {}  # those of one step only, by that step
        self._chained: set[Unit] = set()  # steps handed over before their turn (_chain)
        self._idle: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.offloaded = 0  # rounds run in the worker thread

    @property
    def stopped(self) -> bool:
        """Started and then stopped (a batcher is never started again)."""
        return self._idle is not None and not self._running

    @property
    def queued(self) -> int:
        """Rows submitted and not yet taken into a round."""
        return self._queued

    def busy(self, slot: int) -> bool:
        """Whether a unit on `slot` is queued or running."""
        return self._order.last(slot) is not None

    @property
    def handed_over(self) -> int:
        """Rounds in the worker thread now (running, or queued behind the one running)."""
        return len(self._offloads)

    @property
    def rounds(self) -> int:
        return self.runner.rounds

    @property
    def calls(self) -> int:
        return self.runner.calls

    @property
    def rows(self) -> int:
        return self.runner.rows

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        # Created here so that it belongs to the running loop.
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"ort-{self.model.label}")
        self._accepting = True
        self._running = True

    def stop_accepting(self) -> None:
        self._accepting = False

    async def stop(self, grace_s: float) -> None:
        """Refuse new work, let submitted work finish within `grace_s`, fail the rest."""
        self._accepting = False
        if self._idle is not None and not self._idle.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), max(grace_s, 0.0))
        self._running = False
        if self._kick_due is not None:
            self._kick_due.cancel()
            self._kick_due = None
        for handed in self._offloads:  # still in the worker: failed below, ignored on return
            handed.abandoned = True
        self._offloads.clear()
        self._solo.clear()
        self._chained.clear()
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

    # --- submission ------------------------------------------------------------

    def admit(self, n: int) -> None:
        """Raise unless `n` more rows may be queued now."""
        if not self._accepting:
            raise Unavailable(f"model {self.model.label}: the server is shutting down")
        if not self._running:
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
        assert self._idle is not None
        self._idle.clear()
        before = self._order.last(unit.slot) if isinstance(unit, StepWork) else None
        if self._order.add(unit):
            self._ready.append(unit)
            self._schedule()
        elif isinstance(before, StepWork) and isinstance(unit, StepWork):
            self._chain(before, unit)

    def _chain(self, before: StepWork, w: StepWork) -> None:
        """Hand `w` to the worker now if the step it waits for is alone in a round there.

        A session streaming long chunks with several in flight would otherwise
        leave the worker idle between its calls for the loop's finish of one
        and gather of the next (measured at ~250 us against a ~380 us call
        for T=64). Chained, `w` runs right after `before` in the same worker,
        from the state `before` produced; it is committed only if `before`
        was, and runs again the ordinary way if not.
        """
        first = self._solo.get(before)
        if (
            first is None
            or first.chained_to is not None
            or len(self._offloads) >= MAX_OFFLOADED
            or w.blockers != 1
            or (w.expected is not None and w.expected != first.after)
        ):
            return
        assert first.after is not None
        calls, plan = self.runner.prepare_chained(w, first.calls[0])
        rnd = Round(buckets={len(w.x): plan[0].bucket}, taken=[w])
        handed = self._hand_over(rnd, calls, plan, [])
        handed.after = first.after + len(w.x)
        first.chained_to = handed
        self._solo[w] = handed
        self._chained.add(w)
        self._queued -= 1

    def _done(self, unit: Unit) -> None:
        ready = self._order.done(unit)
        if self._chained:
            ready = [u for u in ready if u not in self._chained]  # already in the worker
        self._ready.extend(ready)

    # --- rounds --------------------------------------------------------------------

    def _schedule(self) -> None:
        """Run _kick once the loop has handled what is ready now (at most one pending).

        A plain callback, not a task woken by an event: a round at low load is
        one step, and a task wake-up costs as much as the rest of its loop work.
        Steps submitted by the same loop pass all land in the one round.
        """
        if self._kick_due is not None or not self._running:
            return
        loop = asyncio.get_running_loop()
        if self._delay_s > 0 and self._queued < self._max_batch:
            self._kick_due = loop.call_later(self._delay_s, self._kick)
        else:
            self._kick_due = loop.call_soon(self._kick)

    def _kick(self) -> None:
        """One round, if one may start; then again later while units are ready."""
        self._kick_due = None
        if self._ready and len(self._offloads) < MAX_OFFLOADED:
            self._round()
        if self._ready and len(self._offloads) < MAX_OFFLOADED:
            self._schedule()  # back-to-back rounds still let others run between them
        self._check_idle()

    def _check_idle(self) -> None:
        # Nothing ready and nothing running means nothing unfinished: every waiting
        # unit waits on one that is ready or running.
        if not self._ready and not self._offloads and self._idle is not None:
            self._idle.set()

    def _round(self) -> None:
        """Take one round of ready units and run it here or hand it to the worker."""
        rnd = Round(started=time.perf_counter())
        handed_over = False
        try:
            self._assemble(rnd)
            if not self.runner.single(rnd):
                handed_over = self._general(rnd)
        except Exception as exc:
            self._fail_round(rnd, exc)
        finally:
            if not handed_over:
                for unit in rnd.taken:
                    self._done(unit)

    def _may_start_here(self) -> bool:
        """Whether a finished round may start the next one itself (see _returned)."""
        return self._running and self._delay_s == 0 and len(self._offloads) < MAX_OFFLOADED

    def _fail_round(self, rnd: Round, exc: Exception) -> None:
        err = internal(log, f"model {self.model.label}: a batch round failed", exc)
        for unit in rnd.taken:
            fail(unit.future, err)

    def _general(self, rnd: Round) -> bool:
        """Run any round: gather per T, compute, scatter; True when handed to the worker.

        A round predicted to be short runs here on the loop. A longer one goes to
        the worker thread, and the loop goes on assembling the next round
        meanwhile: ready units never share a session with a running round
        (seqserve.core.work.Order), so the next round's gather reads settled state,
        and its model call queues right behind this one's.
        """
        runner = self.runner
        calls, plan = runner.prepare(rnd)
        forecasts = [runner.prepare_forecast(w) for w in rnd.forecasts]
        if runner.cost(calls, forecasts) <= runner.inline_s:
            results, rollouts = runner.compute(calls, forecasts)
            runner.finish(rnd, plan, results, forecasts, rollouts)
            return False
        handed = self._hand_over(rnd, calls, plan, forecasts)
        w = rnd.taken[0]
        if len(rnd.taken) == 1 and isinstance(w, StepWork):  # may have a step chained to it
            handed.after = int(self.slab.position[w.slot]) + len(w.x)
            self._solo[w] = handed
        return True

    def _hand_over(
        self, rnd: Round, calls: list[Call], plan: list[Planned], forecasts: list[Rollout]
    ) -> _Handed:
        assert self._executor is not None
        handed = _Handed(rnd, plan, forecasts, calls)
        done = self._executor.submit(self.runner.compute, calls, forecasts)
        loop = asyncio.get_running_loop()
        done.add_done_callback(functools.partial(self._from_worker, loop, handed))
        self._offloads.add(handed)
        self.offloaded += 1
        return handed

    def _from_worker(
        self, loop: asyncio.AbstractEventLoop, handed: _Handed, done: Future[Computed]
    ) -> None:
        """Worker thread: pass the finished round to the loop, in one wake-up."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped
            loop.call_soon_threadsafe(self._returned, handed, done)

    def _returned(self, handed: _Handed, done: Future[Computed]) -> None:
        """Finish a round the worker ran, then start the next one at once.

        Starting it here rather than scheduling a kick saves the loop passes
        between two model calls, which is what a session streaming long
        chunks waits on.
        """
        if handed.abandoned:  # stop() gave up on it and failed its units
            return
        rnd = handed.round
        self._offloads.discard(handed)
        step = rnd.taken[0] if rnd.taken else None
        if isinstance(step, StepWork) and step in self._chained:
            self._chained.discard(step)
            if not handed.after_committed:
                del self._solo[step]
                # It ran from a state that was never committed: run it again from
                # the state as it stands. Its turn has come if what it waited for
                # is done; if that was itself sent back to run again, Order
                # releases this one after it, as any waiting unit.
                self._queued += 1
                if step.blockers == 0:
                    self._ready.appendleft(step)
                    self._schedule()
                return
        committed = 0
        try:
            results, rollouts = done.result()
            committed = self.runner.finish(rnd, handed.plan, results, handed.forecasts, rollouts)
        except Exception as exc:
            self._fail_round(rnd, exc)
        finally:
            chained = handed.chained_to
            if isinstance(step, StepWork) and self._solo.pop(step, None) is not None and chained:
                chained.after_committed = committed == 1  # its one step was applied
            for unit in rnd.taken:
                self._done(unit)
        if self._ready and self._may_start_here():
            self._round()
        if self._ready:
            self._schedule()
        self._check_idle()

    def _assemble(self, rnd: Round) -> None:
        """Take ready units, in order, until the round holds `max_batch` rows."""
        taken = 0
        while self._ready and taken < self._max_batch:
            w = self._ready.popleft()
            self._queued -= rows(w)
            if w.future.done():  # the caller went away before the round
                self._done(w)
                continue
            if isinstance(w, GroupWork):
                live = check_group(self.slab, w)
                rnd.taken.append(w)
                rnd.groups.append(w)
                for t in distinct(w.times[live]).tolist():
                    idx = live[w.times[live] == t]
                    bucket = rnd.buckets.setdefault(t, Bucket())
                    bucket.parts.append((w, idx))
                    bucket.rows += len(idx)
                taken += len(live)
                continue
            turn = check_one(self.slab, w)
            if turn is not None:
                if isinstance(turn, StepResult):
                    assert isinstance(w, StepWork)  # only a step can be a retry
                    self.runner.answer(w.future, turn)  # answered again, nothing applied
                else:
                    fail(w.future, turn)
                self._done(w)
                continue
            rnd.taken.append(w)
            if isinstance(w, ForecastWork):
                rnd.forecasts.append(w)
            else:
                bucket = rnd.buckets.setdefault(len(w.x), Bucket())
                bucket.steps.append(w)
                bucket.rows += 1
            taken += 1
