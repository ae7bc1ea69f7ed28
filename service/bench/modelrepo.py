"""The benchmark's model repository: random-weight forecasters exported to ONNX.

Speed does not depend on the weights' values, so the models are untrained
(seeded random weights); what matters is that they are real exports through
seqserve.models.export, exactly what the server loads in production. Building needs
the `train` extra (torch); serving code never imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from seqserve.bench.config import ModelShape
from seqserve.core.spec import ONNX_FILE, ModelSpec, SpecError, load_spec
from seqserve.hints import install

VERSION = "1"


def _matches(spec: ModelSpec, shape: ModelShape, input_size: int) -> bool:
    return (
        spec.cell == shape.cell
        and spec.hidden_size == shape.hidden
        and spec.num_layers == shape.layers
        and spec.input_size == input_size
    )


def _existing(version_dir: Path, shape: ModelShape, input_size: int) -> ModelSpec | None:
    if not (version_dir / ONNX_FILE).is_file():
        return None
    try:
        spec = load_spec(version_dir)
    except SpecError:
        return None
    return spec if _matches(spec, shape, input_size) else None


def build_repository(
    root: Path,
    shapes: Sequence[ModelShape],
    input_size: int,
    say: Callable[[str], None],
) -> dict[str, ModelSpec]:
    """Export each shape to `root/<name>/1/` (reusing a matching earlier export)."""
    specs: dict[str, ModelSpec] = {}
    missing = []
    for shape in shapes:
        found = _existing(root / shape.name / VERSION, shape, input_size)
        if found is None:
            missing.append(shape)
        else:
            specs[shape.name] = found
    if not missing:
        return specs
    try:
        import torch

        from seqserve.models.export import export_model
        from seqserve.models.networks import Forecaster, Normalization, ServingModule
    except ImportError as exc:
        raise RuntimeError(
            f"building the benchmark models needs the train extra ({install('train')}): {exc}"
        ) from exc
    for shape in missing:
        say(f"exporting {shape.name} (random weights) to {root / shape.name / VERSION}")
        torch.manual_seed(0)
        forecaster = Forecaster(shape.cell, input_size, shape.hidden, shape.layers)
        module = ServingModule(forecaster, Normalization.identity(input_size, input_size))
        specs[shape.name] = export_model(
            module,
            root / shape.name / VERSION,
            autoregressive=True,
            training={"note": "untrained: seeded random weights, for the benchmark only"},
        )
    return specs
