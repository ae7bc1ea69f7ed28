"""PyTorch checkpoints whose configuration travels with the weights.

A checkpoint holds the forecaster's config, the normalisation statistics, the
weights, whether the model is autoregressive and free-form provenance (how it
was trained). `load` rebuilds the ServingModule from the file alone. Only plain
types are stored, so `torch.load(weights_only=True)` reads it without unpickling code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from seqserve.models.networks import Forecaster, ForecasterConfig, Normalization, ServingModule

CHECKPOINT_FORMAT = "seqserve.checkpoint/v1"
CHECKPOINT_FILE = "checkpoint.pt"


class CheckpointError(ValueError):
    """A file that is not a seqserve checkpoint, or one whose weights do not fit its config."""


@dataclass
class Checkpoint:
    module: ServingModule
    autoregressive: bool
    provenance: dict[str, Any] = field(default_factory=dict)


def save(
    path: Path,
    module: ServingModule,
    *,
    autoregressive: bool,
    provenance: dict[str, Any] | None = None,
) -> None:
    """Write the module's config, normalisation, weights and provenance to `path`."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": module.forecaster.config.to_dict(),
        "normalization": module.normalization.to_dict(),
        "residual": module.residual,
        "state_dict": {k: v.detach().cpu() for k, v in module.forecaster.state_dict().items()},
        "autoregressive": autoregressive,
        "provenance": dict(provenance or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


def read(path: Path) -> Checkpoint:
    """Load a checkpoint with its provenance; the module comes back in eval mode."""
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path}: expected format {CHECKPOINT_FORMAT!r}, got {fmt!r}"
        )
    try:
        forecaster = Forecaster.from_config(ForecasterConfig.from_dict(payload["config"]))
        forecaster.load_state_dict(payload["state_dict"])
        norm = Normalization.from_dict(payload["normalization"])
        module = ServingModule(forecaster, norm, residual=bool(payload["residual"]))
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} does not rebuild: {exc}") from exc
    module.eval()
    return Checkpoint(
        module=module,
        autoregressive=bool(payload["autoregressive"]),
        provenance=dict(payload.get("provenance", {})),
    )


def load(path: Path) -> ServingModule:
    """Rebuild the ServingModule stored at `path` (a file or a folder holding checkpoint.pt)."""
    return read(path).module
