"""The gateway's batch request: validated in bulk, split into one group per model version.

A batch names many sessions, each with T steps, in one columnar message. It is
checked with array operations, not per item coroutines, and each model
version gets one GroupWork (one future) for all of its items.

Whole-request errors (raised): an empty request, a `times` list of the wrong
length or with negative entries, a session named twice, a value count that
does not match the items. Per-item errors (returned in BatchResult.errors; the
other items proceed): an unknown or expired session, T == 0, T above the limit,
non-finite values. Item i's values are its next times[i] * input_size values;
an unknown session is taken to have the input size of the request's known
sessions (a request that mixes input sizes and names an unknown session is
refused whole: where that item's values end cannot be known).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from seqserve.core.errors import InvalidArgument, NotFound, SeqServeError, quoted
from seqserve.core.work import GroupWork, distinct

if TYPE_CHECKING:
    from seqserve.core.sessions import Session, _Home

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

# Encoded-size bounds for the answer (protobuf: tags, length prefixes, varints).
ITEM_BYTES = 16  # one output_lengths and one positions varint
ERROR_FRAMING_BYTES = 32  # an ItemError around its message: index, code, tags
# An item that passes the checks here may still fail in its round (a reset or
# close in between, a failed model call); those messages name the model and a
# session id of at most 128 characters.
LATE_ERROR_BYTES = 320


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
    ) -> None:
        """Checks that need no session: counts, duplicates, times."""
        n = len(session_ids)
        if n == 0:
            raise InvalidArgument("expected at least one session in a batch, got 0")
        if len(set(session_ids)) != n:
            seen: dict[str, int] = {}
            for i, sid in enumerate(session_ids):
                if sid in seen:
                    raise InvalidArgument(
                        f"session {quoted(sid)} appears at items {seen[sid]} and {i}; "
                        "expected each session at most once per batch"
                    )
                seen[sid] = i
        t = np.ones(n, np.int64) if times is None else np.asarray(times, np.int64).reshape(-1)
        if len(t) == 0:
            t = np.ones(n, np.int64)  # no times: one step each, as on the wire
        if len(t) != n:
            raise InvalidArgument(f"expected {n} times (one per session) or none, got {len(t)}")
        if (t < 0).any():
            i = int(np.flatnonzero(t < 0)[0])
            raise InvalidArgument(f"expected times[{i}] >= 1, got {int(t[i])}")
        self.n = n
        self.session_ids = session_ids
        self.times = t  # (n,)
        self.values = np.array(values, dtype=np.float32).reshape(-1)  # a copy
        self.max_steps = max_steps
        self.errors: dict[int, SeqServeError] = {}
        self._members: list[tuple[_Home, I64]] = []

    def resolve(
        self, recs: list[Session | None], homes: I64, slots: I64, home_list: Sequence[_Home]
    ) -> None:
        """Checks that need the sessions: value counts, then per-item errors."""
        known = homes >= 0
        sizes = np.array([h.model.spec.input_size for h in home_list], np.int64)
        present = distinct(sizes[homes[known]])
        if not known.all() and len(present) > 1:
            i = int(np.flatnonzero(~known)[0])
            raise NotFound(
                f"unknown session {quoted(self.session_ids[i])} in a batch that mixes input sizes "
                f"{present.tolist()}: its values cannot be told apart from the next item's"
            )
        common = int(present[0]) if len(present) else 1
        f = np.where(known, sizes[np.maximum(homes, 0)], common)  # (n,) input size per item
        counts = self.times * f  # (n,) values per item
        if int(counts.sum()) != len(self.values):
            raise InvalidArgument(
                f"expected {int(counts.sum())} values (sum over items of times[i] * input_size), "
                f"got {len(self.values)}"
            )
        self.recs, self.homes, self.slots, self.home_list = recs, homes, slots, home_list
        self.in_offsets = np.cumsum(counts) - counts  # (n,)
        for i in np.flatnonzero(~known).tolist():
            self.errors[i] = NotFound(
                f"unknown session {quoted(self.session_ids[i])} (never created, closed, or expired)"
            )
        t = self.times
        for i in np.flatnonzero(known & ((t == 0) | (t > self.max_steps))).tolist():
            self.errors[i] = InvalidArgument(
                f"item {i}: expected from 1 to max_steps_per_request={self.max_steps} steps, "
                f"got times[{i}]={int(t[i])}"
            )
        bad = np.flatnonzero(~np.isfinite(self.values))
        if len(bad):
            items = np.searchsorted(self.in_offsets, bad, side="right") - 1
            firsts = np.unique(items, return_index=True)[1]  # first bad value of each item
            for i, j in zip(items[firsts].tolist(), bad[firsts].tolist(), strict=True):
                if i not in self.errors:
                    self.errors[i] = InvalidArgument(
                        f"item {i}: expected finite values, got {self.values[j]} at value "
                        f"{j - int(self.in_offsets[i])} of session {quoted(self.session_ids[i])}"
                    )

    def response_bytes(self) -> int:
        """An upper bound of the answer's encoded size, known before anything is applied."""
        outputs = np.array([h.model.spec.output_size for h in self.home_list], np.int64)
        ok = self.homes >= 0
        if self.errors:
            ok[list(self.errors)] = False
        floats = self.times[ok] * outputs[self.homes[ok]] * 4  # (m,) output bytes per item
        worst = np.maximum(floats, LATE_ERROR_BYTES).sum()
        failed = sum(len(str(e).encode()) + ERROR_FRAMING_BYTES for e in self.errors.values())
        return 64 + ITEM_BYTES * self.n + int(worst) + failed

    def groups(self, loop: asyncio.AbstractEventLoop) -> list[tuple[_Home, GroupWork]]:
        """One GroupWork per model version, items in request order."""
        valid = self.homes >= 0
        if self.errors:
            valid[list(self.errors)] = False
        out: list[tuple[_Home, GroupWork]] = []
        for h in distinct(self.homes[valid]).tolist():
            home = self.home_list[h]
            spec = home.model.spec
            idx = np.flatnonzero(valid & (self.homes == h))
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
                epochs=home.slab.epoch[slots],
                times=self.times[idx],
                x=x,
                input_size=spec.input_size,
                output_size=spec.output_size,
                future=loop.create_future(),
            )
            self._members.append((home, idx))
            out.append((home, group))
        return out

    def result(self, groups: list[GroupWork]) -> BatchResult:
        """Merge the groups' columns back into request order."""
        out_len = np.zeros(self.n, np.int64)
        positions = np.zeros(self.n, np.int64)
        errors = dict(self.errors)
        for (home, idx), g in zip(self._members, groups, strict=True):
            ok = idx[g.ok]
            out_len[ok] = g.times[g.ok] * home.model.spec.output_size
            positions[ok] = g.positions[g.ok]
            for j, err in g.errors:
                errors[int(idx[j])] = err
        for i in errors:  # a failed item reports its session's position, if it is still open
            rec, h = self.recs[i], int(self.homes[i])
            if rec is not None and self.home_list[h].slab.owners[int(self.slots[i])] is rec:
                positions[i] = self.home_list[h].slab.position[self.slots[i]]
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
