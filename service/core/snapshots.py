"""A session's slot as a row and back: what checkpoints write, recovery and imports load.

Times: the slab keeps the last access on the process's monotonic clock; a row
keeps wall-clock time (time.time()), so that a restarted server counts a
session's idle time from its real last step.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

from seqserve.core.directory import ID, PRINCIPAL, SLOT, Session
from seqserve.core.errors import InvalidArgument
from seqserve.core.records import F32, I64, U64, SessionRow, encode_row, encode_rows
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


def snapshot_rows(
    version: ModelVersion, sessions: Sequence[Session], mono: float, wall: float
) -> list[bytes]:
    """`encode_row(snapshot(...))` of each of `sessions` (all live on `version`), in bulk.

    A round's shared-store write needs every stepped session's row; built one by
    one, the rows cost more than the round's model call (~20 us each at LSTM
    128x2), most of it numpy calls on one slot at a time.
    """
    slab, answers = version.slab, version.slab.answers
    slots = np.fromiter(map(_slot, sessions), np.int64, len(sessions))
    by_slot = answers.long_of(slots)
    long = (
        {i: by_slot[slot] for i, slot in enumerate(slots.tolist()) if slot in by_slot}
        if by_slot
        else {}
    )
    return encode_rows(
        list(map(_id, sessions)),
        list(map(_principal, sessions)),
        version.label,
        slab.position[slots],
        wall - (mono - slab.last_access[slots]),  # (n,) on the wall clock, as `snapshot`
        answers.count[slots],
        slab.states_of(slots),
        slab.last_output[slots],
        answers.starts[slots],
        answers.digests[slots],
        answers.outputs[slots],
        long,
    )


_id, _principal, _slot = itemgetter(ID), itemgetter(PRINCIPAL), itemgetter(SLOT)


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


# --- export and import: a session's state, self-describing ----------------------------------

EXPORT_FORMAT = "seqserve.session/v1"


@dataclass
class SessionExport:
    """One session's whole state in named, shaped tensors (ExportSession's answer)."""

    session_id: str
    model: str
    version: str
    position: int
    states: list[tuple[str, tuple[int, ...], F32]]  # (input name, per-session shape, values)
    last_output: F32  # (O,)
    count: int
    starts: I64  # (R,) plus one; 0: none
    digests: U64  # (R,)
    outputs: F32  # (R, O)
    long: dict[int, F32]  # ring index -> (T, O)
    last_access: float  # unix seconds
    checksum: bytes = b""


def export(version: ModelVersion, row: SessionRow) -> SessionExport:
    """A row as named tensors, with the checksum of its canonical encoding."""
    states, at = [], 0
    for s in version.spec.states:
        size = s.per_session_size()
        values = row.state[at : at + size].reshape(s.per_session_shape())
        states.append((s.input, s.per_session_shape(), values))
        at += size
    out = SessionExport(
        row.session_id,
        version.model.name,
        version.model.version,
        row.position,
        states,
        row.last_output,
        row.count,
        row.starts,
        row.digests,
        row.outputs,
        row.long,
        row.last_access,
    )
    out.checksum = checksum(out)
    return out


def checksum(e: SessionExport) -> bytes:
    """SHA-256 of an export's content in a canonical encoding (the session row's bytes)."""
    flat = np.concatenate([v.reshape(-1) for _, _, v in e.states]) if e.states else np.zeros(0)
    row = SessionRow(
        e.session_id,
        "",
        f"{e.model}/{e.version}",
        e.position,
        e.last_access,
        flat.astype(np.float32),
        e.last_output,
        e.count,
        e.starts,
        e.digests,
        e.outputs,
        e.long,
    )
    names = "\n".join(f"{name}{list(shape)}" for name, shape, _ in e.states)
    return hashlib.sha256(EXPORT_FORMAT.encode() + names.encode() + encode_row(row)).digest()


def imported(version: ModelVersion, e: SessionExport) -> SessionRow:
    """The row of an export for `version`, or InvalidArgument saying what does not fit."""
    if not hmac.compare_digest(checksum(e), e.checksum):
        raise InvalidArgument("the session state's checksum does not match: it is corrupted")
    spec = version.spec
    want = [(s.input, s.per_session_shape()) for s in spec.states]
    got = [(name, tuple(shape)) for name, shape, _ in e.states]
    if got != want:
        raise InvalidArgument(
            f"model {version.label}: expected state tensors "
            f"{', '.join(f'{n} {list(sh)}' for n, sh in want)}, got "
            f"{', '.join(f'{n} {list(sh)}' for n, sh in got) or 'none'}"
        )
    o = spec.output_size
    if e.last_output.shape != (o,) or e.outputs.shape[1:] != (o,):
        raise InvalidArgument(
            f"model {version.label}: expected outputs of size {o}, got {list(e.last_output.shape)}"
        )
    for ring, answer in e.long.items():
        if answer.ndim != 2 or answer.shape[1] != o or not 0 <= ring < len(e.starts):
            raise InvalidArgument(
                f"retained answer {ring}: expected [T, {o}], got {list(answer.shape)}"
            )
    flat = np.concatenate([v.reshape(-1) for _, _, v in e.states]).astype(np.float32)
    if not (np.isfinite(flat).all() and np.isfinite(e.last_output).all()):
        raise InvalidArgument("expected finite state values, got NaN or Inf")
    return SessionRow(
        e.session_id,
        "",
        version.label,
        e.position,
        e.last_access,
        flat,
        e.last_output.astype(np.float32),
        e.count,
        e.starts.astype(np.int64),
        e.digests.astype(np.uint64),
        e.outputs.astype(np.float32),
        dict(e.long),
    )
