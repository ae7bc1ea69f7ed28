"""A session's slot as a row and back: what checkpoints write, recovery and imports load.

Times: the slab keeps the last access on the process's monotonic clock; a row
keeps wall-clock time (time.time()), so that a restarted server counts a
session's idle time from its real last step.
"""

from __future__ import annotations

import numpy as np

from seqserve.core.directory import ID, PRINCIPAL, SLOT, Session
from seqserve.core.records import F32, SessionRow
from seqserve.core.versions import ModelVersion


def snapshot(version: ModelVersion, session: Session, mono: float, wall: float) -> SessionRow:
    """The row of a live session; `mono` and `wall` are now on the two clocks."""
    slab, slot = version.slab, session[SLOT]
    count, starts, digests, outputs, long = slab.answers.of(slot)
    return SessionRow(
        session_id=session[ID],
        principal=session[PRINCIPAL],
        label=version.label,
        position=int(slab.position[slot]),
        last_access=wall - (mono - float(slab.last_access[slot])),
        state=slab.state_of(slot),
        last_output=slab.last_output[slot].copy(),
        count=count,
        starts=starts,
        digests=digests,
        outputs=outputs,
        long=long,
    )


def install(version: ModelVersion, slot: int, row: SessionRow, mono: float, wall: float) -> None:
    """Put a row's state, position, answers and idle time into a slot of `version`."""
    slab = version.slab
    slab.load(slot, row.state, row.position, row.last_output, mono - (wall - row.last_access))
    slab.answers.load(slot, row.count, row.starts, row.digests, row.outputs, row.long)


def empty_row(session_id: str, principal: str, version: ModelVersion, wall: float) -> SessionRow:
    """The row of a new session: zero state, nothing applied."""
    spec = version.spec
    size = sum(s.per_session_size() for s in spec.states)
    slab = version.slab
    starts, digests, outputs = (
        np.zeros_like(slab.answers.starts[0]),
        np.zeros_like(slab.answers.digests[0]),
        np.zeros_like(slab.answers.outputs[0]),
    )
    return SessionRow(
        session_id,
        principal,
        version.label,
        0,
        wall,
        np.zeros(size, np.float32),
        np.zeros(spec.output_size, np.float32),
        0,
        starts,
        digests,
        outputs,
    )


def check_shapes(version: ModelVersion, row: SessionRow) -> str | None:
    """What does not fit `version` in a row (state size, outputs), or None."""
    spec = version.spec
    size = sum(s.per_session_size() for s in spec.states)
    shapes = [list(s.per_session_shape()) for s in spec.states]
    if len(row.state) != size:
        return f"expected state {shapes} ({size} values), got {len(row.state)} values"
    if len(row.last_output) != spec.output_size or row.outputs.shape[1:] != (spec.output_size,):
        return f"expected output_size {spec.output_size}, got {len(row.last_output)}"
    return None


__all__ = ["F32", "check_shapes", "empty_row", "install", "snapshot"]
