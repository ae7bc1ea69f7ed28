"""Fixtures for the serving-core tests: exported small models, a registry, a fake clock."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest

from seqserve.core.runtime import LoadedModel, ModelRegistry
from seqserve.core.sessions import SessionManager
from seqserve.core.settings import CoreSettings
from seqserve.store.memory import MemoryDirectory
from tests.store.conftest import redis_cluster, redis_server
from tests.support import REPOSITORY_MODELS, ModelZoo, export_shapes

__all__ = ["redis_cluster", "redis_server"]  # a fixture these tests share with tests/store

PRINCIPAL = "anonymous"


class FakeClock:
    """A clock the test moves by hand: TTLs without sleeping."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> ModelZoo:
    return export_shapes(tmp_path_factory.mktemp("repository"), REPOSITORY_MODELS, seed=7)


@pytest.fixture(scope="session")
def registry(zoo: ModelZoo) -> ModelRegistry:
    return ModelRegistry.load(zoo.repository)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@asynccontextmanager
async def running(
    registry: ModelRegistry,
    settings: CoreSettings | None = None,
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[SessionManager]:
    """A started SessionManager, stopped on exit."""
    kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
    manager = SessionManager(registry, settings or CoreSettings(), MemoryDirectory, **kwargs)
    await manager.start()
    try:
        yield manager
    finally:
        await manager.stop(grace_s=5.0)


class Gate:
    """Wraps a model's run so a test decides when each call may proceed, or fails it.

    Runs in the batcher's worker thread; `entered` counts calls that reached the
    gate, so a test knows a step is in flight (inside the model call).
    """

    def __init__(self, model: LoadedModel) -> None:
        self._run = model.run
        self.open = threading.Event()
        self.entered = threading.Semaphore(0)
        self.fail_next = 0
        self.calls: list[int] = []  # batch size of each call

    def __call__(self, x: np.ndarray, states: Sequence[np.ndarray]) -> Any:
        self.calls.append(x.shape[0])
        self.entered.release()
        if not self.open.wait(timeout=30):
            raise TimeoutError("gate never opened")
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("injected model failure")
        return self._run(x, states)


@pytest.fixture
def gate(registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Gate]:
    """gate(name) puts a Gate in front of that model's run for this test."""

    def install(name: str) -> Gate:
        model = registry.get(name)
        g = Gate(model)
        monkeypatch.setattr(model, "run", g)
        # Gated calls block: they must run in the worker thread, never on the loop.
        monkeypatch.setattr(model, "call_s", 1.0)
        return g

    return install
