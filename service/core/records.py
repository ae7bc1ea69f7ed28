"""The bytes a durable store keeps: journal records and session rows.

Journal records, in the order their changes were applied:

    STEPS   one round's applied steps of one T: the rows' session ids, the
            positions they started at, their inputs and their outputs
    CREATE  a new session: id, principal, model version
    RESET   a session back to its zero state
    CLOSE   a session gone (closed, expired)
    IMPORT  a session created whole from a row (ImportSession)

A session row is one session's complete state: what a checkpoint writes,
what an import brings and what an export carries. Recovery loads the rows
and replays the records after them (seqserve.core.recovery).

Little-endian throughout; arrays are raw float32 / int64 / uint64 bytes.
Shapes: n rows of T steps, F inputs, O outputs; R retained answers.
"""

from __future__ import annotations

import enum
import functools
import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]


class RecordError(ValueError):
    """Bytes that are not a record or a row this version can read."""


class Kind(enum.IntEnum):
    STEPS = 1
    CREATE = 2
    RESET = 3
    CLOSE = 4
    IMPORT = 5


_STEPS = struct.Struct("<BdIIHHI")  # kind, wall, n, T, F, O, length of the ids
_U16 = struct.Struct("<H")
_ROW = struct.Struct("<qdIII")  # position, last access (wall), count, state values, long answers


def _text(value: str) -> bytes:
    data = value.encode()
    return _U16.pack(len(data)) + data


class _Reader:
    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.at = 0

    def take(self, n: int) -> memoryview:
        if self.at + n > len(self.data):
            raise RecordError(f"expected {n} more bytes at offset {self.at}, got {len(self.data)}")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def unpack(self, fmt: struct.Struct) -> tuple[int | float, ...]:
        return fmt.unpack(self.take(fmt.size))

    def text(self) -> str:
        (n,) = self.unpack(_U16)
        return bytes(self.take(int(n))).decode()

    def array(self, dtype: type[np.generic], count: int) -> npt.NDArray[np.generic]:
        width = np.dtype(dtype).itemsize
        return np.frombuffer(self.take(width * count), dtype).copy()


# --- journal records ---------------------------------------------------------------------


@dataclass(frozen=True)
class Steps:
    wall: float  # time.time() when applied
    ids: list[str]  # (n,)
    starts: I64  # (n,) each session's position before the step
    x: F32  # (n, T, F)
    y: F32  # (n, T, O)


@dataclass(frozen=True)
class Create:
    wall: float
    session_id: str
    principal: str
    label: str  # "model/version"


@dataclass(frozen=True)
class Reset:
    wall: float
    session_id: str


@dataclass(frozen=True)
class Close:
    session_id: str


@dataclass(frozen=True)
class Import:
    row: SessionRow


Record = Steps | Create | Reset | Close | Import


def steps(wall: float, ids: list[str], starts: I64, x: F32, y: F32) -> bytes:
    n, t, f = x.shape
    o = y.shape[2]
    names = "\n".join(ids).encode()  # ids are printable: no newline in any
    head = _STEPS.pack(Kind.STEPS, wall, n, t, f, o, len(names))
    return b"".join(
        (head, names, np.ascontiguousarray(starts, "<i8").tobytes(), x.tobytes(), y.tobytes())
    )


_START = struct.Struct("<q")


def step(wall: float, session_id: str, start: int, x: F32, y: F32) -> bytes:
    """`steps` of one session, x (T, F) and y (T, O): the low-load round's record, made quick."""
    t, f = x.shape
    name = session_id.encode()
    head = _STEPS.pack(Kind.STEPS, wall, 1, t, f, y.shape[1], len(name))
    return b"".join((head, name, _START.pack(start), x.tobytes(), y.tobytes()))


def create(wall: float, session_id: str, principal: str, label: str) -> bytes:
    return b"".join(
        (struct.pack("<Bd", Kind.CREATE, wall), _text(session_id), _text(principal), _text(label))
    )


def reset(wall: float, session_id: str) -> bytes:
    return struct.pack("<Bd", Kind.RESET, wall) + _text(session_id)


def close(session_id: str) -> bytes:
    return struct.pack("<B", Kind.CLOSE) + _text(session_id)


def imported(row: SessionRow) -> bytes:
    return struct.pack("<B", Kind.IMPORT) + encode_row(row)


def created_row(rec: Create) -> SessionRow:
    """The row of a session created and never saved: no state yet (its model decides)."""
    empty = np.zeros(0, np.float32)
    return SessionRow(
        rec.session_id,
        rec.principal,
        rec.label,
        0,
        rec.wall,
        empty,
        empty,
        0,
        np.zeros(0, np.int64),
        np.zeros(0, np.uint64),
        np.zeros((0, 0), np.float32),
    )


def wall_of(data: bytes) -> float:
    """When a record's change was applied (time.time()); 0 for a close."""
    rec = decode(data)
    if isinstance(rec, Import):
        return rec.row.last_access
    return 0.0 if isinstance(rec, Close) else rec.wall


def steps_of(data: bytes | memoryview) -> tuple[list[str], list[int], int]:
    """A STEPS record's session ids, start positions and T, without its arrays."""
    r = _Reader(data)
    kind, _, n, t, _, _, names = r.unpack(_STEPS)
    if kind != Kind.STEPS:
        raise RecordError(f"expected a steps record (kind {int(Kind.STEPS)}), got kind {kind}")
    ids = bytes(r.take(int(names))).decode().split("\n") if n else []
    starts = struct.unpack(f"<{int(n)}q", r.take(8 * int(n)))
    return ids, list(starts), int(t)


def decode(data: bytes | memoryview) -> Record:
    """One journal record."""
    r = _Reader(data)
    kind = r.data[0] if len(r.data) else 0
    if kind == Kind.STEPS:
        _, wall, n, t, f, o, names = r.unpack(_STEPS)
        n, t, f, o = int(n), int(t), int(f), int(o)
        ids = bytes(r.take(int(names))).decode().split("\n") if n else []
        starts = r.array(np.int64, n).astype(np.int64)
        x = r.array(np.float32, n * t * f).reshape(n, t, f).astype(np.float32)
        y = r.array(np.float32, n * t * o).reshape(n, t, o).astype(np.float32)
        return Steps(float(wall), ids, starts, x, y)
    r.take(1)
    if kind == Kind.CREATE:
        (wall,) = struct.unpack("<d", r.take(8))
        return Create(float(wall), r.text(), r.text(), r.text())
    if kind == Kind.RESET:
        (wall,) = struct.unpack("<d", r.take(8))
        return Reset(float(wall), r.text())
    if kind == Kind.CLOSE:
        return Close(r.text())
    if kind == Kind.IMPORT:
        return Import(decode_row(r.data[1:]))
    raise RecordError(f"expected a journal record kind in {[k.value for k in Kind]}, got {kind}")


# --- session rows --------------------------------------------------------------------------


@dataclass
class SessionRow:
    """One session, whole: identity, position, state, and the answers kept for retries."""

    session_id: str
    principal: str
    label: str  # "model/version"
    position: int
    last_access: float  # time.time() of its last step, forecast or reset
    state: F32  # (S,) every state tensor's per-session values, in the spec's order, flattened
    last_output: F32  # (O,)
    count: int  # requests applied since its last reset (the answers' ring index)
    starts: I64  # (R,) where each retained request started, plus one; 0: none
    digests: U64  # (R,)
    outputs: F32  # (R, O) the one-step answers
    long: dict[int, F32] = field(default_factory=dict)  # ring index -> (T, O), T > 1
    # Journal records the row does not yet include (a session whose model version is
    # not loaded: kept, replayed when it returns).
    pending: list[bytes] = field(default_factory=list)


def encode_row(row: SessionRow) -> bytes:
    parts = [
        _text(row.session_id),
        _text(row.principal),
        _text(row.label),
        _ROW.pack(row.position, row.last_access, row.count, len(row.state), len(row.long)),
        struct.pack("<HH", len(row.last_output), len(row.starts)),
        np.ascontiguousarray(row.state, "<f4").tobytes(),
        np.ascontiguousarray(row.last_output, "<f4").tobytes(),
        np.ascontiguousarray(row.starts, "<i8").tobytes(),
        np.ascontiguousarray(row.digests, "<u8").tobytes(),
        np.ascontiguousarray(row.outputs, "<f4").tobytes(),
    ]
    for ring, answer in sorted(row.long.items()):
        parts.append(struct.pack("<BI", ring, len(answer)) + answer.astype("<f4").tobytes())
    parts.append(struct.pack("<I", len(row.pending)))
    for record in row.pending:
        parts.append(struct.pack("<I", len(record)) + record)
    return b"".join(parts)


def encode_rows(
    session_ids: Sequence[str],
    principals: Sequence[str],
    label: str,
    positions: I64,
    last_access: npt.NDArray[np.float64],
    counts: npt.NDArray[np.uint32],
    state: F32,
    last_output: F32,
    starts: I64,
    digests: U64,
    outputs: F32,
    long: dict[int, dict[int, F32]],
) -> list[bytes]:
    """`encode_row` of n rows of one model version, byte for byte, with columnar work.

    session_ids and principals: one per row; then one row per session of each
    column: positions, last_access, counts (n,), state (n, S), last_output (n, O),
    starts and digests (n, R), outputs (n, R, O); long: row index -> its long
    answers, for the rows that have any. Rows carry no pending records.
    """
    n, size = state.shape
    o, retained = last_output.shape[1], starts.shape[1]
    # Everything after a row's three texts is fixed-size, up to its long answers: one
    # packed record per row, filled a column at a time. (n,) records of `width` bytes
    fixed = np.zeros(n, _fixed_dtype(size, o, retained))
    fixed["position"], fixed["wall"], fixed["count"] = positions, last_access, counts
    fixed["size"], fixed["o"], fixed["retained"] = size, o, retained
    fixed["state"], fixed["last_output"] = state, last_output
    fixed["starts"], fixed["digests"] = starts, digests
    fixed["outputs"] = outputs.reshape(n, -1)  # (n, R * O)
    if long:
        fixed["long"][list(long)] = [len(long[i]) for i in long]
    width = fixed.dtype.itemsize
    blob = fixed.tobytes()
    # The per-row Python is C-level maps: a row's texts, then its slice of the blob.
    ids = list(map(str.encode, session_ids))
    owners = list(map(str.encode, principals))
    cuts = map(slice, range(0, n * width, width), range(width, n * width + 1, width))
    rows = list(
        map(
            b"".join,
            zip(
                map(_U16.pack, map(len, ids)),
                ids,
                map(_U16.pack, map(len, owners)),
                owners,
                itertools.repeat(_text(label)),
                map(blob.__getitem__, cuts),
            ),
        )
    )
    for i, answers in long.items():  # their answers go between the arrays and the pending count
        extra = [
            struct.pack("<BI", ring, len(a)) + a.astype("<f4").tobytes()
            for ring, a in sorted(answers.items())
        ]
        rows[i] = b"".join((rows[i][:-_NO_PENDING], *extra, rows[i][-_NO_PENDING:]))
    return rows


_NO_PENDING = 4  # bytes of a row's pending-record count (u32 0) at its end


@functools.cache  # one per model version's shapes; making one costs more than a small round
def _fixed_dtype(size: int, o: int, retained: int) -> np.dtype[np.void]:
    """A row after its texts, with no long answers: `_ROW`, the sizes, the arrays, and the
    pending count, packed (no alignment padding) in `encode_row`'s order."""
    return np.dtype(
        [
            ("position", "<i8"),
            ("wall", "<f8"),
            ("count", "<u4"),
            ("size", "<u4"),
            ("long", "<u4"),
            ("o", "<u2"),
            ("retained", "<u2"),
            ("state", "<f4", (size,)),
            ("last_output", "<f4", (o,)),
            ("starts", "<i8", (retained,)),
            ("digests", "<u8", (retained,)),
            ("outputs", "<f4", (retained * o,)),
            ("pending", "<u4"),
        ]
    )


def decode_row(data: bytes | memoryview) -> SessionRow:
    r = _Reader(data)
    sid, principal, label = r.text(), r.text(), r.text()
    position, wall, count, size, n_long = r.unpack(_ROW)
    o, retained = r.unpack(struct.Struct("<HH"))
    o, retained = int(o), int(retained)
    state = r.array(np.float32, int(size)).astype(np.float32)
    last_output = r.array(np.float32, o).astype(np.float32)
    starts = r.array(np.int64, retained).astype(np.int64)
    digests = r.array(np.uint64, retained).astype(np.uint64)
    outputs = r.array(np.float32, retained * o).reshape(retained, o).astype(np.float32)
    long: dict[int, F32] = {}
    for _ in range(int(n_long)):
        ring, t = struct.unpack("<BI", r.take(5))
        long[int(ring)] = r.array(np.float32, int(t) * o).reshape(int(t), o).astype(np.float32)
    (n_pending,) = struct.unpack("<I", r.take(4))
    pending = []
    for _ in range(int(n_pending)):
        (length,) = struct.unpack("<I", r.take(4))
        pending.append(bytes(r.take(int(length))))
    if r.at != len(r.data):
        raise RecordError(f"a session row of {len(r.data)} bytes has {len(r.data) - r.at} extra")
    return SessionRow(
        sid,
        principal,
        label,
        int(position),
        float(wall),
        state,
        last_output,
        int(count),
        starts,
        digests,
        outputs,
        long,
        pending,
    )
