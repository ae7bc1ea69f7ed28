"""Process-wide allocator tuning for the server (glibc only; elsewhere a no-op).

A batch round allocates megabyte-sized arrays (gathered states, ONNX Runtime's
outputs) and frees them a few milliseconds later. glibc serves such sizes with
a fresh mmap each time, so every round pays a page fault per 4 KiB it touches:
measured at ~0.6 us per session-step at batch 1024, a third of the round's
Python-side cost. Serving them from the heap and keeping freed heap memory for
reuse removes that. The price is bounded: at most TRIM_BYTES of freed memory
is kept resident per arena.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_BYTES = 32 << 20  # glibc's own ceiling for its dynamic threshold on 64-bit
TRIM_BYTES = 64 << 20


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
