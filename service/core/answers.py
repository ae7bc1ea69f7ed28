"""Exactly-once steps: what each session keeps of its last applied requests, for retries.

A request may carry the position its session was at before it (`position`).
Equal to the session's position: it is applied. Equal to where one of the
session's last RETAINED applied requests started, with the same values: it is
a retry whose answer was lost, and it is answered again from what that request
returned, applying nothing. Anything else is refused. A client may so keep up
to RETAINED requests of a session in flight and resend all of them after a
broken stream or a restart.

A request is identified by its start position and a 64-bit digest of its
values: a linear hash modulo 2**64 of the float32 bit patterns with odd
weights from splitmix64, which is fixed arithmetic (it survives restarts and
numpy versions) and vectorises over a round's rows.

Shapes: B rows; K = T * F values per request; R = RETAINED answers per slot.
"""

from __future__ import annotations

import functools
import struct
from typing import TypeVar

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

RETAINED = 8
_MASK = (1 << 64) - 1
_SMALL = 16  # requests of up to this many values are hashed with Python integers


@functools.cache
def _weights(k: int) -> U64:
    """K odd 64-bit weights: splitmix64 of 0..K-1 (wrapping arithmetic, never random)."""
    z = np.arange(k, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    w: U64 = (z ^ (z >> np.uint64(31))) | np.uint64(1)
    w.flags.writeable = False
    return w


@functools.cache
def _small_weights(k: int) -> tuple[int, ...]:
    return tuple(int(w) for w in _weights(k))


def digests(x: F32) -> U64:
    """The digest of each row of x (B, K): sum of bits * weight, modulo 2**64, xor K."""
    k = x.shape[1]
    bits = np.ascontiguousarray(x).view(np.uint32).astype(np.uint64)  # (B, K)
    out: U64 = (bits * _weights(k)).sum(axis=1, dtype=np.uint64) ^ np.uint64(k)
    return out


def digest(x: F32) -> int:
    """`digests` of one request's values (any shape), as a Python int."""
    flat = np.ascontiguousarray(x, np.float32).reshape(-1)  # (K,)
    k = len(flat)
    if k > _SMALL:
        return int(digests(flat[None])[0])
    bits = struct.unpack(f"<{k}I", flat.tobytes())
    return (sum(map(int.__mul__, bits, _small_weights(k))) & _MASK) ^ k


class Answers:
    """The answers of each slot's last RETAINED applied requests (a ring per slot).

    A one-step answer (T = 1) lives in the arrays; a longer one is kept aside
    by (slot, ring index), since few sessions send many steps at once.
    """

    def __init__(self, output_size: int) -> None:
        self.output_size = output_size
        # Position before each retained request, plus one: zero means none, so that
        # the reserved rows stay untouched pages until a session uses them.
        self.starts = np.zeros((0, RETAINED), np.int64)  # (N, R)
        self.digests = np.zeros((0, RETAINED), np.uint64)  # (N, R)
        self.outputs = np.zeros((0, RETAINED, output_size), np.float32)  # (N, R, O) when T = 1
        self.count = np.zeros(0, np.uint32)  # (N,) requests applied since the slot was cleared
        self.long: dict[tuple[int, int], F32] = {}  # (slot, ring index) -> (T, O), T > 1

    def resize(self, capacity: int) -> None:
        self.starts = grow_rows(self.starts, capacity)
        self.digests = grow_rows(self.digests, capacity)
        self.outputs = grow_rows(self.outputs, capacity)
        self.count = grow_rows(self.count, capacity)

    def clear(self, slot: int) -> None:
        """Forget a slot's answers (a reset, a close, a new session in it)."""
        self.starts[slot] = 0
        self.count[slot] = 0
        if self.long:
            for i in range(RETAINED):
                self.long.pop((slot, i), None)

    def record(self, slots: I64, starts: I64, digests: U64, y: F32) -> None:
        """Keep the answers y (B, T, O) of requests that started at `starts` (B,)."""
        ring = (self.count[slots] % RETAINED).astype(np.int64)  # (B,)
        self.starts[slots, ring] = starts + 1
        self.digests[slots, ring] = digests
        if y.shape[1] == 1:
            self.outputs[slots, ring] = y[:, 0]
            if self.long:
                for key in zip(slots.tolist(), ring.tolist(), strict=True):
                    self.long.pop(key, None)
        else:
            for key, answer in zip(zip(slots.tolist(), ring.tolist(), strict=True), y, strict=True):
                self.long[key] = answer.copy()  # (T, O)
        self.count[slots] += 1

    def record_one(self, slot: int, start: int, digest: int, y: F32) -> None:
        """`record` for one request: y (T, O)."""
        ring = int(self.count[slot]) % RETAINED
        self.starts[slot, ring] = start + 1
        self.digests[slot, ring] = digest
        if len(y) == 1:
            self.outputs[slot, ring] = y[0]
            if self.long:
                self.long.pop((slot, ring), None)
        else:
            self.long[(slot, ring)] = y.copy()
        self.count[slot] += 1

    def of(self, slot: int) -> tuple[int, I64, U64, F32, dict[int, F32]]:
        """A slot's ring: (count, starts plus one (R,), digests (R,), outputs (R, O), long)."""
        long = (
            {ring: a.copy() for (s, ring), a in self.long.items() if s == slot} if self.long else {}
        )
        count = int(self.count[slot])
        return (
            count,
            self.starts[slot].copy(),
            self.digests[slot].copy(),
            self.outputs[slot].copy(),
            long,
        )

    def long_of(self, slots: I64) -> dict[int, dict[int, F32]]:
        """The long answers of `slots` that have any: slot -> ring index -> (T, O) copy."""
        if not self.long:
            return {}
        wanted = set(slots.tolist())
        out: dict[int, dict[int, F32]] = {}
        for (slot, ring), answer in self.long.items():  # one pass, not one per slot
            if slot in wanted:
                out.setdefault(slot, {})[ring] = answer.copy()
        return out

    def load(
        self, slot: int, count: int, starts: I64, digests: U64, outputs: F32, long: dict[int, F32]
    ) -> None:
        """Put back a ring taken with `of` (a restored or imported session)."""
        self.clear(slot)
        self.count[slot] = count
        self.starts[slot] = starts
        self.digests[slot] = digests
        self.outputs[slot] = outputs
        for ring, answer in long.items():
            self.long[(slot, ring)] = answer

    def find(self, slot: int, start: int, digest: int, steps: int) -> F32 | None:
        """The answer (T, O) of the retained request that started at `start` with these values."""
        hits = np.flatnonzero(
            (self.starts[slot] == start + 1) & (self.digests[slot] == np.uint64(digest))
        )
        if len(hits) == 0:
            return None
        ring = int(hits[-1])
        answer = self.long.get((slot, ring)) if steps > 1 else self.outputs[slot, ring][None]
        if answer is None or len(answer) != steps:
            return None
        return answer.copy()


G = TypeVar("G", bound=np.generic)


def grow_rows(arr: npt.NDArray[G], capacity: int) -> npt.NDArray[G]:
    """A zeroed copy with `capacity` rows, the old rows kept (new pages stay untouched)."""
    new = np.zeros((capacity, *arr.shape[1:]), arr.dtype)
    new[: arr.shape[0]] = arr
    return new
