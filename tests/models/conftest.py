"""Shared helpers for the models/ tests: build, export and run small forecasters."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from seqserve.core.spec import ModelSpec
from seqserve.models.export import export_model
from seqserve.models.networks import Forecaster, Normalization, ServingModule


@dataclass
class Exported:
    module: ServingModule
    spec: ModelSpec
    session: ort.InferenceSession
    version_dir: Path

    def run(
        self, x: np.ndarray, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """One ONNX Runtime call: x (B, T, F), state tensors (L, B, H) -> (y, next state)."""
        feeds = {self.spec.input_name: x}
        feeds.update({s.input: t for s, t in zip(self.spec.states, state, strict=True)})
        y, *next_state = self.session.run(None, feeds)
        return y, tuple(next_state)


def make_module(
    cell: str, num_layers: int, input_size: int, hidden_size: int, output_size: int, seed: int
) -> ServingModule:
    """A randomly initialised module with non-trivial normalisation (so it is exercised)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    norm = Normalization(
        input_mean=(torch.rand(input_size, generator=g) * 4 - 2).tolist(),
        input_std=(torch.rand(input_size, generator=g) * 2 + 0.5).tolist(),
        target_mean=(torch.rand(output_size, generator=g) * 4 - 2).tolist(),
        target_std=(torch.rand(output_size, generator=g) * 2 + 0.5).tolist(),
    )
    forecaster = Forecaster(cell, input_size, hidden_size, num_layers, output_size)
    return ServingModule(forecaster, norm).eval()


def ort_session(path: Path, log_severity: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = log_severity  # 2: warnings and worse are logged
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_small(
    root: Path, cell: str, num_layers: int, input_size: int, hidden_size: int, output_size: int
) -> Exported:
    module = make_module(cell, num_layers, input_size, hidden_size, output_size, seed=num_layers)
    version_dir = root / f"{cell}-{num_layers}" / "1"
    spec = export_model(module, version_dir, autoregressive=False)
    return Exported(module, spec, ort_session(version_dir / "model.onnx"), version_dir)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The models here are tiny; two spin-waiting threads on a busy 2-core CI box
    made them several times slower, one thread never is."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_lstm(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return export_small(tmp_path_factory.mktemp("lstm"), "lstm", 2, 2, 16, 1)
