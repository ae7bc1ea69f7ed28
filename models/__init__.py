"""Training, evaluation and ONNX export of recurrent forecasters (LSTM, GRU, RNN).

Importing this package is cheap and pulls in neither torch nor ONNX: the
server imports it only to find the bundled model repository. The PyTorch side
lives in the submodules (`seqserve.models.networks`, `.export`, `.train`, ...),
which need the `seqserve[train]` extra.
"""

from __future__ import annotations

from pathlib import Path

REPOSITORY: Path = Path(__file__).resolve().parent / "repository"
"""The bundled model repository: <REPOSITORY>/<name>/<version>/model.onnx + model.json."""

__all__ = ["REPOSITORY"]
