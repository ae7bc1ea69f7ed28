"""Fixtures for the server tests: freshly exported small models and a live server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from seqserve.models.networks import ServingModule
from seqserve.settings import ServerSettings
from tests.grpc.harness import ServerThread
from tests.support import REPOSITORY_MODELS, build_repository, torch_reference, torch_rollout

AUTOREGRESSIVE = [name for name, shape in REPOSITORY_MODELS.items() if shape.autoregressive]
NOT_AUTOREGRESSIVE = next(n for n, s in REPOSITORY_MODELS.items() if not s.autoregressive)
TOL = 1e-5  # server vs PyTorch, relative and absolute


@dataclass(frozen=True)
class Zoo:
    """The served models' repository and their PyTorch originals, run independently."""

    repository: Path
    modules: dict[str, ServingModule]

    def input_size(self, name: str) -> int:
        return REPOSITORY_MODELS[name].input_size

    def inputs(self, name: str, steps: int, rng: np.random.Generator) -> np.ndarray:
        """Random raw inputs for a model: (steps, F)."""
        return rng.normal(0.0, 2.0, size=(steps, self.input_size(name))).astype(np.float32)

    def forward(self, name: str, x: np.ndarray) -> np.ndarray:
        """PyTorch over the whole sequence from the zero state: (N, F) -> (N, O)."""
        return torch_reference(self.modules[name], x)

    def rollout(self, name: str, history: np.ndarray, horizon: int) -> np.ndarray:
        return torch_rollout(self.modules[name], history, horizon)

    def assert_matches(self, name: str, x: np.ndarray, got: np.ndarray) -> float:
        """got (N, O) equals PyTorch on x (N, F); returns the largest difference."""
        want = self.forward(name, x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL, err_msg=name)
        return float(np.abs(got - want).max())


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    root = tmp_path_factory.mktemp("repository")
    return Zoo(root, build_repository(root, seed=5))


def settings_for(repository: Path, **overrides: Any) -> ServerSettings:
    return replace(ServerSettings(repository=repository, address="127.0.0.1:0"), **overrides)


@pytest.fixture(scope="module")
def server(zoo: Zoo) -> Iterator[ServerThread]:
    """A server with default limits except the message size and the steps per request."""
    settings = settings_for(zoo.repository, max_message_bytes=256 * 1024, max_steps_per_request=512)
    with ServerThread(settings) as running:
        yield running
