"""How ONNX Runtime outputs are compared with PyTorch's (numpy only, no torch).

Two correct float32 computations of the same value can differ by one rounding
step of the result. For O(1) quantities that step is ~1e-7, far below the 1e-5
tolerance; for raw outputs such as CO2 near 370 ppm it is 3.05e-5, above it.
So the rule is: |actual - expected| <= tolerance + ulp(expected) elementwise,
ulp being the float32 spacing at the expected value. Anything a model really
computes differently shows up far beyond that.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

DEFAULT_TOLERANCE = 1e-5


def excess_diff(actual: npt.ArrayLike, expected: npt.ArrayLike) -> float:
    """The largest |actual - expected| beyond one float32 step of `expected` (0 if none)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise ValueError(f"expected shape {e.shape}, got {a.shape}")
    if a.size == 0:
        return 0.0
    ulp = np.spacing(np.abs(e).astype(np.float32)).astype(np.float64)
    excess = np.abs(a - e) - ulp
    if not np.isfinite(excess).all():
        return float("inf")
    return max(0.0, float(excess.max()))


def max_abs_diff(actual: npt.ArrayLike, expected: npt.ArrayLike) -> float:
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    return float(np.abs(a - e).max()) if a.size else 0.0


def close(
    actual: npt.ArrayLike, expected: npt.ArrayLike, tolerance: float = DEFAULT_TOLERANCE
) -> bool:
    return excess_diff(actual, expected) <= tolerance
