"""One round's numbers: gather states and inputs, run the model, scatter and deliver.

The batcher (seqserve.core.batcher) decides which units form a round and where it
runs; this module does the arithmetic of a round against the slab, and knows
nothing of queues, order or threads. Every method but `compute` (and the
`rollout` it calls) runs on the event loop; `compute` runs wherever the
batcher sends it and touches no shared state.

Commit rule (Slab.commit, the one writer): a step's state, position and last
output are written only when its model call succeeded and the session's slot
epoch is unchanged since the step was queued (no reset or close in between).
A step succeeds (returns outputs) exactly when its state was committed;
otherwise it fails with a status, and the session is left as it was. With a
durable store, what a round committed is appended to the journal and its
answers (forecasts and retries too) are sent once that record is durable.

Shapes: B rows (sessions) of T steps, F input features, O outputs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from seqserve.core import records
from seqserve.core.answers import digest, digests
from seqserve.core.checks import stale
from seqserve.core.errors import Internal, internal
from seqserve.core.figures import ROUND_ROWS, ROUND_SECONDS, Histogram
from seqserve.core.journal import RoundLog
from seqserve.core.runtime import LoadedModel
from seqserve.core.slab import Slab
from seqserve.core.work import (
    Deliveries,
    ForecastResult,
    ForecastWork,
    GroupWork,
    Reply,
    StepResult,
    StepWork,
    Unit,
    all_of,
    fail,
    settle,
)

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Owner = TypeVar("Owner")

# A round predicted to take less than a hop to the worker thread and back runs
# on the loop. The hop is not just two thread wake-ups: on the worker, a B=1 call
# of the 2-layer LSTM (37 us on the loop) took 90-100 us of CPU, its weights
# pulled into another core's cache each time. With a 50 us bound a slow spell of
# the machine lifted that call's estimate over it and one-stream p50 went from
# 1.1-1.2x the inline reference to 1.8-2.0x; with 200 us it stays 1.1-1.3x.
INLINE_S = 200e-6


@dataclass
class Bucket:
    """Rows of one T in a round: single steps first, then group parts."""

    steps: list[StepWork] = field(default_factory=list)
    parts: list[tuple[GroupWork, I64]] = field(default_factory=list)  # group, its item indices
    rows: int = 0


@dataclass(eq=False)
class Call:
    """One ONNX Runtime call prepared on the loop, run in the worker."""

    x: F32  # (B, T, F)
    states: list[F32]  # model layout, batch B; empty when chained
    # Chained: start from the new states of `after`, a B=1 call of the same session
    # that the same worker runs first (see Batcher._chain).
    after: Call | None = None
    out: tuple[F32, list[F32]] | BaseException | None = None  # set by compute


class BrokenChain(Exception):
    """A chained call whose predecessor failed: it was not run (and is run again)."""


@dataclass(eq=False, slots=True)
class Planned:
    """A bucket of one T in a round, and which of the round's calls serve it."""

    t: int
    bucket: Bucket
    slots: I64  # (B,) in row order
    first: int  # its calls are calls[first:end]
    end: int
    epochs: npt.NDArray[np.uint32]  # (B,) the slots' epochs when gathered
    x: F32  # (B, T, F) its inputs


@dataclass
class Rollout:
    """A forecast prepared on the loop: the last output and a copy of the state."""

    last: F32  # (O,)
    states: list[F32]  # model layout, batch 1
    position: int
    horizon: int  # rows of the rollout (horizon, O)


Computed = tuple[list[tuple[F32, list[F32]] | BaseException], list[F32 | BaseException]]


@dataclass
class Round:
    buckets: dict[int, Bucket] = field(default_factory=dict)
    forecasts: list[ForecastWork] = field(default_factory=list)
    groups: list[GroupWork] = field(default_factory=list)
    taken: list[Unit] = field(default_factory=list)  # every unit that entered the round
    started: float = 0.0  # perf_counter() when it was assembled (0: not timed)


class RoundRunner(Generic[Owner]):
    """The arithmetic of rounds for one model version and its slab."""

    def __init__(
        self,
        model: LoadedModel,
        slab: Slab[Owner],
        max_batch: int,
        clock: Callable[[], float],
        journal: RoundLog | None = None,
    ) -> None:
        self.model = model
        self.slab = slab
        self.max_batch = max_batch
        self._clock = clock
        self.journal = journal  # None: nothing to make durable before answering
        self._axes = [st.batch_axis for st in model.spec.states]
        self.inline_s = INLINE_S
        # Figures for metrics, tests and the benchmark.
        self.rounds = 0
        self.calls = 0
        self.rows = 0
        self.steps = 0  # session-steps applied
        self.round_rows = Histogram(ROUND_ROWS)
        self.round_seconds = Histogram(ROUND_SECONDS)

    def single(self, rnd: Round) -> bool:
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
        self.rounds += 1
        self.calls += 1
        try:
            y, states = self.model.run(w.x[None], slab.views(slot))  # x (1, T, F), y (1, T, O)
        except Exception as exc:
            fail(w.future, self.internal(exc, 1))
            return True
        # Synchronous on the loop since _assemble checked the epoch: it still holds.
        position = slab.commit_one(slot, w.epoch, states, y[0], digest(w.x), self._clock())
        self.rows += 1
        if position is None:
            fail(w.future, stale(slab, w.session_id, slot, w.owner, "running"))
            return True
        result = StepResult(y[0], position)  # y[0] (T, O)
        self.steps += t
        self.timed(rnd, 1)
        journal = self.journal
        if journal is None:
            settle(w.future, result)
            return True
        durable = journal.append(records.step(time.time(), w.session_id, position - t, w.x, y[0]))
        if durable.done() and not durable.cancelled() and durable.exception() is None:
            settle(w.future, result)  # written on the spot (a quick store): no more to wait for
            return True
        delivery = Deliveries()
        delivery.add(w.future, result)
        delivery.send_after(durable)
        return True

    def timed(self, rnd: Round, rows: int) -> None:
        """A round's figures: its rows, and its seconds from assembly to its answers' turn."""
        self.round_rows.observe(rows)
        if rnd.started:
            self.round_seconds.observe(time.perf_counter() - rnd.started)

    def answer(self, reply: Reply[StepResult], result: StepResult) -> None:
        """Answer a retry from what its request returned, once all that was applied is durable."""
        delivery = Deliveries()
        delivery.add(reply, result)
        delivery.send_after(self.journal.barrier() if self.journal is not None else None)

    # --- gather, compute, scatter ----------------------------------------------------

    def prepare(self, rnd: Round) -> tuple[list[Call], list[Planned]]:
        """Gather inputs and states per T; the plan says which calls serve which bucket."""
        f = self.model.spec.input_size
        calls: list[Call] = []
        plan: list[Planned] = []
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
            for a in range(0, len(slots), self.max_batch):
                chunk = slots[a : a + self.max_batch]
                calls.append(
                    Call(np.ascontiguousarray(x[a : a + len(chunk)]), self.slab.gather(chunk))
                )
            plan.append(Planned(t, bucket, slots, first, len(calls), epochs, x))
        return calls, plan

    def prepare_chained(self, w: StepWork, after: Call) -> tuple[list[Call], list[Planned]]:
        """Like `prepare` for a round of the one step `w`, whose state `after` will make."""
        bucket = Bucket(steps=[w], rows=1)
        slots = np.array([w.slot], np.int64)
        epochs = np.array([w.epoch], np.uint32)  # as queued: a reset since fails it
        return [Call(w.x[None], [], after)], [
            Planned(len(w.x), bucket, slots, 0, 1, epochs, w.x[None])
        ]

    def cost(self, calls: list[Call], forecasts: list[Rollout]) -> float:
        """Predicted seconds of the round's model calls."""
        row_steps = sum(c.x.shape[0] * c.x.shape[1] for c in calls)
        steps = sum(f.horizon - 1 for f in forecasts)  # each a call of one row
        return self.model.estimate(row_steps + steps, len(calls) + steps)

    def prepare_forecast(self, w: ForecastWork) -> Rollout:
        slot = np.array([w.slot], np.int64)
        last = self.slab.last_output[w.slot].copy()  # (O,)
        return Rollout(last, self.slab.gather(slot), int(self.slab.position[w.slot]), w.horizon)

    def compute(self, calls: list[Call], forecasts: list[Rollout]) -> Computed:
        """Worker thread: every model call of a round; failures are returned, not raised."""
        run = self.model.run
        results: list[tuple[F32, list[F32]] | BaseException] = []
        for c in calls:
            states = c.states
            if c.after is not None:
                before = c.after.out
                if not isinstance(before, tuple):
                    c.out = BrokenChain()
                    results.append(c.out)
                    continue
                states = before[1]
            try:
                c.out = run(c.x, states)
            except Exception as exc:
                c.out = exc
            results.append(c.out)
        rollouts: list[F32 | BaseException] = []
        for f in forecasts:
            try:
                rollouts.append(self.rollout(f.last, f.states, f.horizon))
            except Exception as exc:
                rollouts.append(exc)
        return results, rollouts

    def rollout(self, last: F32, states: list[F32], horizon: int) -> F32:
        """Feed each prediction back as the next input, from a copy of the state."""
        o = len(last)
        out = np.empty((horizon, o), np.float32)  # (horizon, O)
        out[0] = last
        for h in range(1, horizon):
            y, states = self.model.run(out[h - 1].reshape(1, 1, o), states)  # y (1, 1, O)
            out[h] = y[0, -1]
        return out

    def finish(
        self,
        rnd: Round,
        plan: list[Planned],
        results: list[tuple[F32, list[F32]] | BaseException],
        forecasts: list[Rollout],
        rollouts: list[F32 | BaseException],
    ) -> int:
        """Commit what the round computed and answer its units; the rows committed."""
        now = self._clock()
        slab = self.slab
        journal = self.journal
        delivery = Deliveries()
        written: list[asyncio.Future[None]] = []  # this round's records
        committed = 0
        if results or rollouts:
            self.rounds += 1
            self.calls += len(results)
        for p in plan:
            got = results[p.first : p.end]
            failed = next((r for r in got if isinstance(r, BaseException)), None)
            if failed is not None:
                self.fail_bucket(p.bucket, failed, len(p.slots))
                continue
            outs = [r for r in got if not isinstance(r, BaseException)]
            y = outs[0][0] if len(outs) == 1 else np.concatenate([r[0] for r in outs])  # (B, T, O)
            states = (
                outs[0][1]
                if len(outs) == 1
                else [
                    np.concatenate([r[1][k] for r in outs], axis=ax)
                    for k, ax in enumerate(self._axes)
                ]
            )
            rows = len(p.slots)
            applied = slab.commit(
                p.slots, p.epochs, states, y, digests(p.x.reshape(rows, -1)), now
            )  # x (B, T * F)
            n_applied = int(applied.sum())
            committed += n_applied
            self.rows += rows
            self.steps += n_applied * p.t
            if journal is not None and n_applied:
                written.append(journal.append(self.record(p, y, applied)))
            self.deliver(p, y, applied, delivery)
        for w, prepared, outcome in zip(rnd.forecasts, forecasts, rollouts, strict=True):
            if isinstance(outcome, BaseException):
                fail(w.future, self.internal(outcome, 1))
            else:
                slab.touch(w.slot, now)
                delivery.add(w.future, ForecastResult(outcome, prepared.position))
        for g in rnd.groups:
            delivery.add(g.future, g)
        if results or rollouts:
            self.timed(rnd, sum(len(p.slots) for p in plan) + len(rollouts))
        if journal is not None:
            # Every record of this round (a shared store may refuse one and not another),
            # and what came before (a retry's answer, a forecast's state).
            barrier = journal.barrier()
            delivery.send_after(all_of([*written, *([barrier] if barrier is not None else [])]))
        else:
            delivery.send_after(None)
        return committed

    def record(self, p: Planned, y: F32, applied: npt.NDArray[np.bool_]) -> bytes:
        """The journal record of a bucket's applied rows: y (B, T, O)."""
        ids = [w.session_id for w in p.bucket.steps]
        for g, idx in p.bucket.parts:
            ids += [g.session_ids[i] for i in idx.tolist()]
        keep = np.flatnonzero(applied)
        slots = p.slots[keep]
        starts = self.slab.position[slots] - p.t  # (B',) where each started
        return records.steps(
            time.time(), [ids[i] for i in keep.tolist()], starts, p.x[keep], y[keep]
        )

    def deliver(
        self, p: Planned, y: F32, applied: npt.NDArray[np.bool_], delivery: Deliveries
    ) -> None:
        """Hand each row's outputs to its work: y (B, T, O), rows in bucket order."""
        slab, t = self.slab, p.t
        o = y.shape[2]
        steps = p.bucket.steps
        row = len(steps)
        if steps:  # the bucket's single-session rows come first, then its groups' parts
            # Python values, once for the bucket: indexing numpy per row costs more.
            ok_rows = applied[:row].tolist()
            after = slab.position[p.slots[:row]].tolist()  # (n,) positions once applied
            for w, ok, y_w, position in zip(steps, ok_rows, y, after, strict=False):
                if ok:
                    delivery.add(w.future, StepResult(y_w, position))  # y_w (T, O)
                else:
                    fail(w.future, stale(slab, w.session_id, w.slot, w.owner, "running"))
        for g, idx in p.bucket.parts:
            n = len(idx)
            ok = applied[row : row + n]
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
                    g.fail(i, stale(slab, g.session_ids[i], g.slot_list[i], g.owners[i], "running"))
            row += n

    def internal(self, exc: BaseException, rows: int) -> Internal:
        """The error of a failed model call: logged once, shared by every step it fails."""
        return internal(
            log, f"model {self.model.label}: the model call failed", exc, detail=f" on {rows} rows"
        )

    def fail_bucket(self, bucket: Bucket, exc: BaseException, rows: int) -> None:
        err = self.internal(exc, rows)
        for w in bucket.steps:
            fail(w.future, err)
        for g, idx in bucket.parts:
            for i in idx.tolist():
                g.fail(i, err)
