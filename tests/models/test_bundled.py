"""The bundled repository: small files, better than naive, ONNX equal to its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seqserve.core.spec import load_spec
from seqserve.models import REPOSITORY, checkpoint
from seqserve.models.data import load_co2
from seqserve.models.parity import excess_diff
from tests.models.conftest import ort_session

BUNDLED = ["co2-lstm", "co2-gru"]
FILES = ["checkpoint.pt", "metrics.json", "model.json", "model.onnx"]


@pytest.fixture(scope="module")
def co2_inputs() -> np.ndarray:
    return load_co2().values[None, :-1]  # (1, N-1, 1): every week but the last


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_files_are_complete_and_small(name: str) -> None:
    version = REPOSITORY / name / "1"
    assert sorted(p.name for p in version.iterdir()) == FILES
    for f in FILES:
        assert (version / f).stat().st_size < 1_000_000


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_beats_its_naive_baseline(name: str) -> None:
    version = REPOSITORY / name / "1"
    metrics = json.loads((version / "metrics.json").read_text())
    assert metrics["test_mae"] < metrics["naive_mae"]
    assert metrics["test_mae"] < metrics["seasonal_naive_mae"]
    spec = load_spec(version)
    assert spec.training["metrics"] == metrics
    assert spec.autoregressive and spec.input_size == spec.output_size == 1
    assert spec.cell == name.removeprefix("co2-")


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_onnx_streams_what_its_checkpoint_computes(
    name: str, co2_inputs: np.ndarray, capfd: pytest.CaptureFixture[str]
) -> None:
    """Week by week through ONNX Runtime (state carried), then in chunks, against the
    checkpoint's PyTorch forward over the whole series in one call; quietly."""
    version = REPOSITORY / name / "1"
    spec = load_spec(version)
    module = checkpoint.load(version)
    with torch.no_grad():
        y_ref, s_ref = module(torch.from_numpy(co2_inputs))
    session = ort_session(version / "model.onnx")
    zero = [np.zeros((spec.num_layers, 1, spec.hidden_size), np.float32) for _ in spec.states]
    steps = co2_inputs.shape[1]
    for chunk in (1, 97):
        state = list(zero)
        ys = []
        for t in range(0, steps, chunk):
            feeds = {"x": co2_inputs[:, t : t + chunk]}
            feeds.update({s.input: v for s, v in zip(spec.states, state, strict=True)})
            y, *state = session.run(None, feeds)
            ys.append(y)
        y_onnx = np.concatenate(ys, axis=1)  # (1, N-1, 1)
        assert y_onnx.shape == y_ref.shape
        # Raw ppm near 370: allow the one float32 step there (see seqserve.models.parity).
        assert excess_diff(y_onnx, y_ref.numpy()) <= 1e-5
        assert excess_diff(np.stack(state), torch.stack(s_ref).numpy()) <= 1e-5
    assert "[W:" not in capfd.readouterr().err


def test_repository_holds_only_model_folders() -> None:
    names = sorted(p.name for p in Path(REPOSITORY).iterdir() if not p.name.startswith("."))
    assert names == sorted(BUNDLED)
