"""`import models` stays cheap: the server imports it only to find the repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import seqserve.models as models


def test_importing_models_pulls_in_no_torch_or_onnx() -> None:
    code = (
        "import sys, seqserve.models; "
        "heavy = sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'statsmodels') "
        "if m in sys.modules); print(heavy)"
    )
    root = Path(models.__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_repository_points_at_the_bundled_models() -> None:
    assert (models.REPOSITORY / "co2-lstm" / "1" / "model.onnx").is_file()
