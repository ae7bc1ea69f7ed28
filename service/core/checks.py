"""What a unit meets when its turn comes: run, be answered again, or fail.

A step runs only if its session is the one it was queued for (the slot's
epoch is unchanged: no reset or close since) and the session is at the
position the step expects, when it names one. A step that names the start
of one of the session's last applied requests, with the same values, is a
retry whose answer was lost: it gets that answer again and applies nothing
(seqserve.core.answers). Any other position is refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from seqserve.core.answers import digest
from seqserve.core.errors import FailedPrecondition, NotFound, SeqServeError, Unavailable
from seqserve.core.slab import Slab
from seqserve.core.work import ForecastWork, GroupWork, StepResult, StepWork

I64 = npt.NDArray[np.int64]


def stale(slab: Slab[Any], session_id: str, slot: int, owner: object, doing: str) -> SeqServeError:
    """The error of a step whose session changed while it was `doing` (queued, running)."""
    if session_id in slab.moved:
        return Unavailable(
            f"session {session_id!r} was changed on another server while this step was "
            f"{doing} here; it was not applied: send it again"
        )
    if slab.owners[slot] is owner:
        return FailedPrecondition(
            f"session {session_id!r} was reset while this step was {doing}; "
            "the step was not applied"
        )
    return NotFound(f"session {session_id!r} was closed or expired while this step was {doing}")


def out_of_place(session_id: str, position: int, expected: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"session {session_id!r}: expected position {position}, got {expected}"
    )


def check_one(slab: Slab[Any], w: StepWork | ForecastWork) -> SeqServeError | StepResult | None:
    """None: run it. An error: fail it. A StepResult: a retry, answered with it."""
    if int(slab.epoch[w.slot]) != w.epoch:
        return stale(slab, w.session_id, w.slot, w.owner, "queued")
    position = int(slab.position[w.slot])
    if isinstance(w, ForecastWork):
        if position == 0:
            return FailedPrecondition(
                f"session {w.session_id!r} has no step yet: a forecast starts from the "
                "prediction of the last step (expected position >= 1, got 0)"
            )
        return None
    if w.expected is None or w.expected == position:
        return None
    answer = slab.answers.find(w.slot, w.expected, digest(w.x), len(w.x))
    if answer is None:
        return out_of_place(w.session_id, position, w.expected)
    return StepResult(answer, position)


def check_group(slab: Slab[Any], w: GroupWork) -> I64:
    """Settle the items that will not run (changed sessions, retries, misplaced); the rest.

    Returns the indices of the items to run. A retried item's outputs are
    written into the group's columns here, as a run would write them.
    """
    live = slab.epoch[w.slots] == w.epochs  # (n,)
    for i in np.flatnonzero(~live).tolist():
        w.fail(i, stale(slab, w.session_ids[i], w.slot_list[i], w.owners[i], "queued"))
    if w.expected is not None:
        positions = slab.position[w.slots]  # (n,)
        off = live & (w.expected != positions)
        for i in np.flatnonzero(off).tolist():
            live[i] = False
            slot, t, expected = w.slot_list[i], int(w.times[i]), int(w.expected[i])
            values = w.x[w.in_offsets[i] : w.in_offsets[i] + t * w.input_size]
            answer = slab.answers.find(slot, expected, digest(values), t)
            if answer is None:
                w.fail(i, out_of_place(w.session_ids[i], int(positions[i]), expected))
                continue
            at = w.out_offsets[i]
            w.outputs[at : at + answer.size] = answer.ravel()  # (T * O,)
            w.ok[i] = True
            w.positions[i] = positions[i]
    return np.flatnonzero(live).astype(np.int64)
