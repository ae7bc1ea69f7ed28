"""The gateway's batch request: validated in bulk, split into one group per model version.

A batch names many sessions, each with T steps, in one columnar message. It is
checked with array operations (seqserve.core.validation), not per item
coroutines, and each model version gets one GroupWork (one future) for all of
its items.

Whole-request errors (raised): an empty request, a `times` list of the wrong
length or with negative entries, a session named twice, a value count that
does not match the items. Per-item errors (returned in BatchResult.errors; the
other items proceed): an unknown or expired session, T == 0, T above the limit,
non-finite values. Item i's values are its next times[i] * input_size values;
an unknown session is taken to have the input size of the request's known
sessions (a request that mixes input sizes and names an unknown session is
refused whole: where that item's values end cannot be known).

Shapes: n items; item i has times[i] steps of its model's F inputs and O outputs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from seqserve.core import validation
from seqserve.core.directory import Found, Session, unknown_session
from seqserve.core.errors import NotFound, SeqServeError, quoted
from seqserve.core.versions import ModelVersion
from seqserve.core.work import GroupWork, distinct

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Item i's outputs are the next output_lengths[i] values of `outputs` (0 on failure)."""

    output_lengths: list[int]
    outputs: F32  # flat, time-major per item
    positions: list[int]  # each session's position afterwards (0 for an unknown session)
    errors: list[tuple[int, SeqServeError]]  # failed items only, by index


class BatchPlan:
    def __init__(
        self,
        session_ids: Sequence[str],
        times: Sequence[int] | npt.ArrayLike | None,
        values: npt.ArrayLike,
        max_steps: int,
        positions: Sequence[int] | npt.ArrayLike | None = None,
    ) -> None:
        """Checks that need no session: counts, duplicates, times, positions."""
        validation.batch_ids(session_ids)
        self.n = n = len(session_ids)
        self.session_ids = session_ids
        self.times = validation.batch_times(times, n)  # (n,)
        self.positions = validation.batch_positions(positions, n)  # (n,) or None
        self.values = np.array(values, dtype=np.float32).reshape(-1)  # a copy: the core keeps it
        self.max_steps = max_steps
        self.errors: dict[int, SeqServeError] = {}
        self._members: list[tuple[ModelVersion, I64]] = []

    def resolve(self, found: Found, versions: Sequence[ModelVersion], ttl_s: float) -> None:
        """Checks that need the sessions: value counts, then per-item errors."""
        recs, where, slots = found
        known = where >= 0
        sizes = np.array([v.spec.input_size for v in versions], np.int64)
        present = distinct(sizes[where[known]])
        if not known.all() and len(present) > 1:
            i = int(np.flatnonzero(~known)[0])
            raise NotFound(
                f"unknown session {quoted(self.session_ids[i])} in a batch that mixes input sizes "
                f"{present.tolist()}: its values cannot be told apart from the next item's"
            )
        common = int(present[0]) if len(present) else 1
        f = np.where(known, sizes[np.maximum(where, 0)], common)  # (n,) input size per item
        counts = self.times * f  # (n,) values per item
        validation.batch_value_count(counts, self.values)
        self.recs, self.where, self.slots, self.versions = recs, where, slots, versions
        self.in_offsets = np.cumsum(counts) - counts  # (n,)
        for i in np.flatnonzero(~known).tolist():
            self.errors[i] = unknown_session(self.session_ids[i], ttl_s)
        self.errors.update(
            validation.batch_item_errors(
                np.flatnonzero(known), self.times, self.values, self.in_offsets, f, self.max_steps
            )
        )

    def attempted(self) -> npt.NDArray[np.bool_]:
        """The items that will run (n,): known sessions without an up-front error."""
        ok = self.where >= 0
        if self.errors:
            ok[list(self.errors)] = False
        return ok

    def output_values(self) -> I64:
        """Output values each item returns if it succeeds (n,): times[i] * O, 0 if not attempted."""
        outputs = np.array([v.spec.output_size for v in self.versions], np.int64)
        ok = self.attempted()
        return np.where(ok, self.times * outputs[np.maximum(self.where, 0)], 0)

    def groups(self, loop: asyncio.AbstractEventLoop) -> list[tuple[ModelVersion, GroupWork]]:
        """One GroupWork per model version, items in request order."""
        valid = self.attempted()
        out: list[tuple[ModelVersion, GroupWork]] = []
        for v in distinct(self.where[valid]).tolist():
            version = self.versions[v]
            spec = version.spec
            idx = np.flatnonzero(valid & (self.where == v))
            if len(idx) == self.n:  # every item, in order: the request as it came
                x, owners, ids = self.values, self.recs, self.session_ids
            else:
                counts = self.times[idx] * spec.input_size
                starts = np.repeat(self.in_offsets[idx] - (np.cumsum(counts) - counts), counts)
                x = self.values[starts + np.arange(int(counts.sum()))]
                picked = idx.tolist()
                owners = [self.recs[i] for i in picked]
                ids = [self.session_ids[i] for i in picked]
            slots = self.slots[idx]
            group = GroupWork(
                owners=owners,
                session_ids=ids,
                slots=slots,
                epochs=version.slab.epoch[slots],
                times=self.times[idx],
                x=x,
                input_size=spec.input_size,
                output_size=spec.output_size,
                future=loop.create_future(),
                expected=None if self.positions is None else self.positions[idx],
            )
            self._members.append((version, idx))
            out.append((version, group))
        return out

    def result(self, groups: list[GroupWork], is_open: Callable[[Session], bool]) -> BatchResult:
        """Merge the groups' columns back into request order."""
        out_len = np.zeros(self.n, np.int64)
        positions = np.zeros(self.n, np.int64)
        errors = dict(self.errors)
        for (version, idx), g in zip(self._members, groups, strict=True):
            ok = idx[g.ok]
            out_len[ok] = g.times[g.ok] * version.spec.output_size
            positions[ok] = g.positions[g.ok]
            for j, err in g.errors:
                errors[int(idx[j])] = err
        for i in errors:  # a failed item reports its session's position, if it is still open
            rec = self.recs[i]
            if rec is not None and is_open(rec):
                positions[i] = self.versions[int(self.where[i])].slab.position[self.slots[i]]
        if len(groups) == 1 and len(groups[0].slots) == self.n and groups[0].ok.all():
            outputs: F32 = groups[0].outputs  # the common case: nothing to move
        else:
            offsets = np.cumsum(out_len) - out_len  # (n,) final offset of each item
            outputs = np.zeros(int(out_len.sum()), np.float32)
            for (_, idx), g in zip(self._members, groups, strict=True):
                lengths = out_len[idx]  # (m,) 0 for failed items
                dst = np.repeat(offsets[idx], lengths)
                within = np.arange(len(dst)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
                src = np.repeat(g.out_offsets, lengths) + within
                outputs[dst + within] = g.outputs[src]
        return BatchResult(
            output_lengths=out_len.tolist(),
            outputs=outputs,
            positions=positions.tolist(),
            errors=sorted(errors.items()),
        )
