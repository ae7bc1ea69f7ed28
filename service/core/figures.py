"""Counts and histograms the core keeps for whoever reports them (metrics, tests, bench).

Plain Python numbers updated on the event loop's thread, with no dependency: a
front end (seqserve.grpc.metrics) reads them when it is scraped. A histogram
is Prometheus-shaped: cumulative counts per upper bound, a sum and a count.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

# Rows (sessions' requests) in one round, and a round's seconds from its start to its answers.
ROUND_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
ROUND_SECONDS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)
# One write of a durable or shared store.
STORE_SECONDS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 1.0)


class Histogram:
    """Observations in buckets by upper bound (the last bucket is +Inf)."""

    __slots__ = ("bounds", "buckets", "count", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.buckets = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.buckets[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound as Prometheus writes it, observations <= it), +Inf last."""
        out, running = [], 0
        for bound, n in zip(
            [*map(repr, map(float, self.bounds)), "+Inf"], self.buckets, strict=True
        ):
            running += n
            out.append((bound, running))
        return out
