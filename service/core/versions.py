"""One served model version: its model, the slab of its sessions' state, and its batcher.

Everything numeric about a session lives here, in the slab; its steps and
forecasts go through this version's batcher. The session directory names
a session's version and slot; the facade (seqserve.core.sessions) passes work
here once the request is validated.
"""

from __future__ import annotations

from collections.abc import Callable

from seqserve.core.batcher import Batcher
from seqserve.core.directory import ID, SLOT, Session
from seqserve.core.journal import RoundLog
from seqserve.core.runtime import LoadedModel
from seqserve.core.settings import CoreSettings
from seqserve.core.slab import F32, Slab
from seqserve.core.spec import ModelSpec
from seqserve.core.work import ForecastResult, ForecastWork, Reply, StepResult, StepWork


class ModelVersion:
    """A model version and what it owns; `index` is its place in the manager's list."""

    __slots__ = (
        "_clock",
        "batcher",
        "closed",
        "created",
        "expired",
        "index",
        "model",
        "retired",
        "slab",
        "spec",
    )

    def __init__(
        self,
        index: int,
        model: LoadedModel,
        settings: CoreSettings,
        clock: Callable[[], float],
        journal: RoundLog | None = None,
    ) -> None:
        self.index = index
        self.model = model
        self.spec: ModelSpec = model.spec
        self._clock = clock
        # Reserved for the session cap: pages are resident only once used (see slab).
        self.slab: Slab[Session] = Slab(model.spec, reserve=settings.max_sessions)
        self.batcher: Batcher[Session] = Batcher(model, self.slab, settings, clock, journal)
        # Sessions since start, for metrics: created (or imported), closed, expired idle.
        self.created = 0
        self.closed = 0
        self.expired = 0
        # Removed from the repository (seqserve.core.reload): no new sessions; the open
        # ones keep working until they close or expire.
        self.retired = False

    @property
    def label(self) -> str:
        return self.model.label

    def step(
        self, session: Session, x: F32, position: int | None, reply: Reply[StepResult]
    ) -> None:
        """Queue a session's validated steps x (T, F); the outcome goes to `reply`.

        `position`, when given, is where the client expects the session to be
        when the step runs (checked then, in the session's order).
        """
        slot = session[SLOT]
        epoch = int(self.slab.epoch[slot])
        self.batcher.submit(StepWork(session, session[ID], slot, epoch, x, position, reply))
        self.slab.touch(slot, self._clock())

    def forecast(self, session: Session, horizon: int, reply: Reply[ForecastResult]) -> None:
        """Queue a rollout of `horizon` steps from the session's state (which stays as it is)."""
        slot = session[SLOT]
        epoch = int(self.slab.epoch[slot])
        self.batcher.submit(ForecastWork(session, session[ID], slot, epoch, horizon, reply))
        self.slab.touch(slot, self._clock())
