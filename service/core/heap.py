"""Process-wide memory tuning for the server: glibc's allocator, and Python's collector.

A batch round allocates megabyte-sized arrays (gathered states, ONNX Runtime's
outputs) and frees them a few milliseconds later. glibc serves such sizes with
a fresh mmap each time, so every round pays a page fault per 4 KiB it touches:
measured at ~0.6 us per session-step at batch 1024, a third of the round's
Python-side cost. Serving them from the heap and keeping freed heap memory for
reuse removes that. The price is bounded: at most TRIM_BYTES of freed memory
is kept resident per arena.

A stream step allocates a few dozen short-lived container objects (messages,
futures, results), so CPython's default young-generation threshold (700
allocations) runs a collection every dozen or so steps, and each one walks
objects that outlive it. Measured at 100 streams: ~5% of the event loop's CPU in
the collector (gc_collect_main and its visitors). Collecting young objects
every GEN0_THRESHOLD allocations instead, and moving what exists at start
(modules, models, the server) out of the collector's sight, brings that down.
What a step leaves behind is still freed by reference counting the moment it is
dropped; only reference cycles wait longer to be collected.
"""

from __future__ import annotations

import ctypes
import gc
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_BYTES = 32 << 20  # glibc's own ceiling for its dynamic threshold on 64-bit
TRIM_BYTES = 64 << 20
GEN0_THRESHOLD = 20_000  # CPython's default: 700


def keep_round_buffers_in_heap() -> bool:
    """Tune glibc's malloc as above; False where there is no glibc mallopt."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_BYTES) == 1
    )
    if not ok:
        log.warning("mallopt refused the heap thresholds; large arrays stay on mmap")
    return ok


def collect_less_often() -> tuple[int, int, int]:
    """Raise the collector's young threshold and freeze what exists now (see above).

    Returns the thresholds as they were. Call once, when the process is done
    importing and before it serves.
    """
    before: tuple[int, int, int] = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(GEN0_THRESHOLD, before[0]), *before[1:])
    return before
