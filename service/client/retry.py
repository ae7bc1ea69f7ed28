"""How a session handle retries: steps carry their position, so a retry is never applied twice.

A handle knows its session's position. Each step it sends names the position
it starts at; the server applies it once, and answers a repeat of one of the
session's last RETAINED requests with that request's answer (see the
`position` field of seqserve.v1.StepRequest). So when a step fails with
UNAVAILABLE (a server going away, restarting, or its store failing) or its
stream breaks, the handle sends it again, with the same position, after a
backoff, until the policy's deadline; an application sees every step
answered exactly once. A stream keeps at most RETAINED steps in flight, so
that every one of them can be answered again after a break.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

RETAINED = 8  # the server keeps the answers of a session's last 8 requests


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a step that failed with UNAVAILABLE for up to `deadline_s`, backing off."""

    deadline_s: float = 30.0  # give up (raise the last UnavailableError) after this long
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not (
            self.deadline_s >= 0
            and 0 < self.initial_backoff_s <= self.max_backoff_s
            and self.multiplier >= 1
        ):
            raise ValueError(f"expected deadline >= 0 and 0 < initial <= max backoff, got {self}")

    def delays(self) -> Iterator[float]:
        """Seconds to wait before each retry (full jitter), until the deadline is spent."""
        spent, ceiling = 0.0, self.initial_backoff_s
        while True:
            delay = random.uniform(ceiling / 2, ceiling)
            if spent + delay > self.deadline_s:
                return
            spent += delay
            yield delay
            ceiling = min(ceiling * self.multiplier, self.max_backoff_s)


NO_RETRY = RetryPolicy(deadline_s=0.0)
