"""The model versions a session manager runs: served ones, and removed ones still in use.

Each loaded version has a ModelVersion (its slab and batcher) at a fixed index
in `versions`, the list the session directory and the stores index by. The
registry says what is served (listed, and open to new sessions); a reload
(seqserve.core.reload) adds versions at new indices and retires removed ones,
which keep serving their open sessions until none is left and are then
unloaded. A label put back after its version was unloaded gets a new
ModelVersion: indices are never reused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy.typing as npt

from seqserve.core import validation
from seqserve.core.batcher import Batcher
from seqserve.core.directory import Session
from seqserve.core.journal import RoundLog
from seqserve.core.runtime import LoadedModel, ModelEntry, ModelRegistry
from seqserve.core.settings import CoreSettings
from seqserve.core.versions import ModelVersion
from seqserve.core.work import StepResult

log = logging.getLogger(__name__)


class Catalog:
    """What a manager runs, by index and by (name, version)."""

    def __init__(
        self,
        registry: ModelRegistry,
        versions: list[ModelVersion],
        settings: CoreSettings,
        clock: Callable[[], float],
        journal: RoundLog | None,
    ) -> None:
        self.registry = registry
        self.versions = versions  # filled here; the stores were handed the same list
        self._settings = settings
        self._clock = clock
        self._journal = journal
        self._unloading: set[asyncio.Task[None]] = set()
        # Callbacks of the shared store, told of versions added and unloaded.
        self.on_added: Callable[[ModelVersion], None] | None = None
        self.on_unloaded: Callable[[ModelVersion], None] | None = None
        versions += [
            ModelVersion(i, m, settings, clock, journal) for i, m in enumerate(registry.models())
        ]
        self._by_label = {(v.model.name, v.model.version): v for v in versions}

    def models(self) -> list[ModelEntry]:
        """Every served model with its versions."""
        return self.registry.list()

    def model(self, name: str, version: str | None = None) -> LoadedModel:
        """A served model version (the latest when version is None or empty), or NotFound."""
        return self.registry.get(name, version)

    def version(self, name: str, version: str | None = None) -> ModelVersion:
        """What a served model version owns: its slab and batcher; NotFound if not served."""
        loaded = self.registry.get(name, version)
        return self._by_label[(loaded.name, loaded.version)]

    def loaded(self, name: str, version: str) -> ModelVersion | None:
        """The newest ModelVersion under a label, served or retired (None if never loaded)."""
        return self._by_label.get((name, version))

    async def run_once(
        self, name: str, version: str | None, values: npt.ArrayLike, max_steps: int
    ) -> tuple[ModelVersion, StepResult]:
        """T steps from the zero state, nothing kept: a stateless call (the KServe front end's
        request without a sequence). Off the event loop, beside the batchers."""
        v = self.version(name, version)
        x = validation.steps(values, v.spec.input_size, max_steps)  # (T, F)
        y, _ = await asyncio.to_thread(v.model.run, x[None], v.model.zero_states(1))  # (1, T, O)
        return v, StepResult(outputs=y[0], position=len(x))

    def batchers(self) -> list[Batcher[Session]]:
        return [v.batcher for v in self.versions]

    async def add(self, model: LoadedModel) -> ModelVersion:
        """Serve a version loaded after start: its own slab and batcher, the next index."""
        v = ModelVersion(len(self.versions), model, self._settings, self._clock, self._journal)
        await v.batcher.start()
        self.versions.append(v)
        self._by_label[(model.name, model.version)] = v
        if self.on_added is not None:
            self.on_added(v)
        self.registry.add(model)
        return v

    def unload(self, v: ModelVersion) -> None:
        """Stop a removed version that no session uses any more (its model call thread)."""
        if self.on_unloaded is not None:
            self.on_unloaded(v)
        task = asyncio.get_running_loop().create_task(v.batcher.stop(0.0))
        self._unloading.add(task)  # referenced until done: the loop keeps only weak refs
        task.add_done_callback(self._unloading.discard)
        log.info("model %s unloaded: removed, and no session uses it any more", v.label)
