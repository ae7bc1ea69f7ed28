"""Checks of what a request carries, shared by the single, stream and batch paths.

One set of messages, each saying what was expected and what arrived. The
single-session checks raise `InvalidArgument`; the batch checks either raise
(a request whose columns do not add up) or return per-item errors (the other
items proceed).

Shapes: T steps of F input features; a batch has n items, item i carrying
times[i] * F_i values, time-major.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from seqserve.core.errors import InvalidArgument, quoted

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

MAX_ID_LENGTH = 128
MAX_POSITION = 2**63 - 1  # positions are int64 in the slab


def session_id(session_id: str) -> None:
    """A client-chosen id: 1 to MAX_ID_LENGTH printable characters (empty means: mint one)."""
    if len(session_id) > MAX_ID_LENGTH:
        raise InvalidArgument(
            f"expected a session id of at most {MAX_ID_LENGTH} characters, got {len(session_id)}"
        )
    if not session_id.isprintable():
        raise InvalidArgument(f"expected a session id of printable characters, got {session_id!r}")


def step_count(t: int, max_steps: int, got: str) -> InvalidArgument | None:
    """The error for T steps outside 1..max_steps (`got` says how T arrived), or None."""
    if t < 1:
        return InvalidArgument(f"expected at least 1 step, got {got}")
    if t > max_steps:
        return InvalidArgument(too_many_steps(max_steps, got))
    return None


def too_many_steps(max_steps: int, got: str) -> str:
    return f"expected at most max_steps_per_request={max_steps} steps, got {got}"


def not_finite(value: float, index: int, input_size: int) -> str:
    """The message for the first non-finite value, at `index` of one request's T * F values."""
    return (
        f"expected finite values, got {value} at index {index} "
        f"(step {index // input_size}, feature {index % input_size})"
    )


# Up to this many values, checking them as Python floats beats numpy's isfinite and
# all (~1.3 us of fixed cost, ~0.2 us for one value): a stream's step is one or a few.
SMALL_VALUES = 16


def _all_finite(flat: F32) -> bool:
    if len(flat) <= SMALL_VALUES:
        return all(map(math.isfinite, flat.tolist()))
    return bool(np.isfinite(flat).all())


def steps(
    values: npt.ArrayLike, input_size: int, max_steps: int, position: int | None = None
) -> F32:
    """T steps for one session: T * input_size finite values -> (T, F) float32.

    A float32 array is taken as it is (the core keeps it: the caller hands it
    over); anything else is converted. `position`, where the client expects
    the session to be, must not be negative.
    """
    if not (isinstance(values, np.ndarray) and values.dtype == np.float32):
        values = np.asarray(values, dtype=np.float32)  # (a front end hands over float32)
    flat = values.reshape(-1)  # (T * F,)
    n = len(flat)
    if n == 0 or n % input_size:
        raise InvalidArgument(
            f"expected a positive multiple of input_size={input_size} values "
            f"(T*{input_size}, T >= 1), got {n}"
        )
    t = n // input_size
    if t > max_steps:  # t >= 1 here, so one comparison is all of step_count
        raise InvalidArgument(too_many_steps(max_steps, f"T={t} ({n} values)"))
    if not _all_finite(flat):
        i = int(np.flatnonzero(~np.isfinite(flat))[0])
        raise InvalidArgument(not_finite(float(flat[i]), i, input_size))
    if position is not None and position < 0:
        raise InvalidArgument(f"expected position >= 0, got {position}")
    return flat.reshape(t, input_size)  # (T, F)


def horizon(horizon: int, max_steps: int) -> None:
    if not 1 <= horizon <= max_steps:
        raise InvalidArgument(
            f"expected a horizon from 1 to max_steps_per_request={max_steps}, got {horizon}"
        )


# --- the batch path: checked with array operations, not per item -------------------------


def batch_ids(session_ids: Sequence[str]) -> None:
    """At least one session, each at most once."""
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


def batch_times(times: Sequence[int] | npt.ArrayLike | None, n: int) -> I64:
    """Steps per item (n,): one each when there are none, as on the wire."""
    t = np.ones(n, np.int64) if times is None else np.asarray(times, np.int64).reshape(-1)
    if len(t) == 0:
        t = np.ones(n, np.int64)
    if len(t) != n:
        raise InvalidArgument(f"expected {n} times (one per session) or none, got {len(t)}")
    if (t < 0).any():
        i = int(np.flatnonzero(t < 0)[0])
        raise InvalidArgument(f"expected times[{i}] >= 1, got {int(t[i])}")
    return t


def batch_positions(positions: Sequence[int] | npt.ArrayLike | None, n: int) -> I64 | None:
    """The position each item's session is expected at (n,), or None when there are none."""
    if positions is None:
        return None
    p = np.asarray(positions, np.uint64).reshape(-1)
    if len(p) == 0:
        return None
    if len(p) != n:
        raise InvalidArgument(f"expected {n} positions (one per session) or none, got {len(p)}")
    if (p > np.uint64(MAX_POSITION)).any():
        i = int(np.flatnonzero(p > np.uint64(MAX_POSITION))[0])
        raise InvalidArgument(f"expected positions[{i}] <= {MAX_POSITION}, got {int(p[i])}")
    return p.astype(np.int64)


def batch_value_count(counts: I64, values: F32) -> None:
    """The values add up to the items' times[i] * input_size (counts (n,))."""
    if int(counts.sum()) != len(values):
        raise InvalidArgument(
            f"expected {int(counts.sum())} values (sum over items of times[i] * input_size), "
            f"got {len(values)}"
        )


def batch_item_errors(
    checked: I64,
    times: I64,
    values: F32,
    offsets: I64,
    input_sizes: I64,
    max_steps: int,
) -> dict[int, InvalidArgument]:
    """Per-item errors of the items `checked`: steps out of range, then non-finite values.

    times, offsets (where each item's values start) and input_sizes are (n,).
    """
    found: dict[int, InvalidArgument] = {}
    t = times[checked]
    for i in checked[(t < 1) | (t > max_steps)].tolist():
        err = step_count(int(times[i]), max_steps, f"times[{i}]={int(times[i])}")
        assert err is not None
        found[i] = InvalidArgument(f"item {i}: {err}")
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        items = np.searchsorted(offsets, bad, side="right") - 1  # the item of each bad value
        firsts = np.unique(items, return_index=True)[1]  # the first bad value of each item
        wanted = set(checked.tolist())
        for i, j in zip(items[firsts].tolist(), bad[firsts].tolist(), strict=True):
            if i in wanted and i not in found:
                at = j - int(offsets[i])
                message = not_finite(float(values[j]), at, int(input_sizes[i]))
                found[i] = InvalidArgument(f"item {i}: {message}")
    return found
