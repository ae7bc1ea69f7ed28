"""Test helpers shared by tests/core (the core, in process) and tests/grpc (over gRPC).

`build_repository` exports small, freshly initialised PyTorch models into a
repository folder; `torch_reference` and `torch_rollout` compute what PyTorch
itself says those models output, independently of ONNX Runtime and the server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from seqserve.core.spec import ModelSpec
from seqserve.models.export import export_model
from seqserve.models.networks import Forecaster, Normalization, ServingModule

F32 = npt.NDArray[np.float32]

# The references are tiny single-sequence forwards; PyTorch's intra-op thread pool
# only adds spin-waiting on a 2-core machine shared with the server under test
# (measured: 0.7 s instead of 2 ms for a 250-step LSTM forward).
torch.set_num_threads(1)


@dataclass(frozen=True)
class ModelShape:
    cell: str
    num_layers: int
    input_size: int
    hidden_size: int
    output_size: int
    autoregressive: bool


# Every cell, 1-3 layers, multi-feature inputs, and one model whose output is not
# its next input (output_size != input_size, so not autoregressive).
REPOSITORY_MODELS: dict[str, ModelShape] = {
    "lstm-ar": ModelShape("lstm", 2, 1, 16, 1, True),
    "gru-ar": ModelShape("gru", 1, 2, 12, 2, True),
    "rnn-ar": ModelShape("rnn", 3, 1, 8, 1, True),
    "lstm-wide": ModelShape("lstm", 1, 3, 10, 2, False),
}
VERSION = "1"


@dataclass(frozen=True)
class ModelZoo:
    """An exported repository and the PyTorch modules it was exported from."""

    repository: Path
    modules: dict[str, ServingModule]  # by model name (each exported as version 1)
    specs: dict[str, ModelSpec]


def make_module(shape: ModelShape, seed: int) -> ServingModule:
    """A randomly initialised module with non-trivial normalisation, in eval mode."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    f, o = shape.input_size, shape.output_size
    norm = Normalization(
        input_mean=(torch.rand(f, generator=g) * 4 - 2).tolist(),
        input_std=(torch.rand(f, generator=g) * 2 + 0.5).tolist(),
        target_mean=(torch.rand(o, generator=g) * 4 - 2).tolist(),
        target_std=(torch.rand(o, generator=g) * 2 + 0.5).tolist(),
    )
    forecaster = Forecaster(shape.cell, f, shape.hidden_size, shape.num_layers, o)
    return ServingModule(forecaster, norm).eval()


def export_shapes(root: Path, shapes: Mapping[str, ModelShape], seed: int = 0) -> ModelZoo:
    """Export each shape as `root/<name>/1/`, every module from its own seed."""
    modules: dict[str, ServingModule] = {}
    specs: dict[str, ModelSpec] = {}
    for i, (name, shape) in enumerate(shapes.items()):
        module = make_module(shape, seed + 100 * i)
        specs[name] = export_model(
            module, root / name / VERSION, autoregressive=shape.autoregressive
        )
        modules[name] = module
    return ModelZoo(repository=root, modules=modules, specs=specs)


def build_repository(root: Path, seed: int) -> dict[str, ServingModule]:
    """Export REPOSITORY_MODELS into `root/<name>/1/`; the modules by model name."""
    return export_shapes(root, REPOSITORY_MODELS, seed).modules


def export_zoo(
    root: Path,
    models: Mapping[str, tuple[str, int, int, int, int]],
    autoregressive: Iterable[str],
    seed: int = 0,
) -> ModelZoo:
    """Export models given as name: (cell, layers, input_size, hidden_size, output_size)."""
    ar = set(autoregressive)
    shapes = {
        name: ModelShape(cell, layers, f, h, o, name in ar)
        for name, (cell, layers, f, h, o) in models.items()
    }
    return export_shapes(root, shapes, seed)


def torch_reference(module: ServingModule, inputs: npt.ArrayLike) -> F32:
    """PyTorch's forward over the whole sequence from zero state: inputs (T, F) -> (T, O)."""
    x = torch.as_tensor(np.asarray(inputs, np.float32))[None]  # (1, T, F)
    with torch.no_grad():
        y, _ = module(x)  # (1, T, O)
    return np.asarray(y[0].numpy(), np.float32)


def torch_rollout(module: ServingModule, inputs: npt.ArrayLike, horizon: int) -> F32:
    """PyTorch's autoregressive rollout after `inputs` (T, F): (horizon, O).

    Row 0 is the prediction made after the last input; each further row comes
    from feeding the previous prediction back as the next input.
    """
    x = torch.as_tensor(np.asarray(inputs, np.float32))[None]  # (1, T, F)
    out = []
    with torch.no_grad():
        y, state = module(x)  # y (1, T, O)
        prediction = y[:, -1:]  # (1, 1, O)
        out.append(prediction[0, 0])
        for _ in range(horizon - 1):
            prediction, state = module(prediction, state)  # (1, 1, O)
            out.append(prediction[0, 0])
    return np.asarray(torch.stack(out).numpy(), np.float32)  # (horizon, O)
