"""Training runs: a smoke run learns, seeds reproduce, the CLI writes and exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from seqserve.core.spec import load_spec
from seqserve.models import checkpoint
from seqserve.models.cli import main
from seqserve.models.data import fit_normalization, split_by_time
from seqserve.models.networks import Forecaster, Normalization, ServingModule
from seqserve.models.train import TrainConfig, load_series, split_metrics, stream, train
from tests.models.conftest import ort_session

TINY = TrainConfig(
    data="sine",
    cell="gru",
    hidden_size=8,
    window=40,
    burn_in=5,
    batch_size=8,
    batches_per_epoch=10,
    max_epochs=12,
    patience=12,
    residual=False,
    sine_steps=800,
    level_shift=0.0,
)
TINY_ARGS = [
    "--data", "sine", "--cell", "gru", "--hidden", "8", "--window", "40", "--burn-in", "5",
    "--batch-size", "8", "--batches-per-epoch", "10", "--epochs", "3", "--quiet",
    "--no-residual",
]  # fmt: skip


def untrained_val_loss(config: TrainConfig) -> float:
    """The validation loss of the same initial weights before any training step."""
    torch.manual_seed(config.seed)
    series = load_series(config)
    splits = split_by_time(len(series))
    norm = fit_normalization(series, splits, residual=config.residual)
    net = Forecaster(config.cell, 1, config.hidden_size, config.num_layers, 1)
    module = ServingModule(net, norm, residual=config.residual).eval()
    return split_metrics(module, series, splits, stream(module, series))["val_loss"]


def test_training_lowers_the_loss() -> None:
    result = train(TINY, progress=False)
    before = untrained_val_loss(TINY)
    assert result.metrics["val_loss"] < 0.25 * before
    assert min(result.history["val_loss"]) == pytest.approx(result.metrics["val_loss"], rel=1e-5)
    assert result.history["train_batch_loss"][-1] < result.history["train_batch_loss"][0]
    assert result.metrics["test_mae"] < result.metrics["naive_mae"]


def test_the_same_seed_gives_the_same_model() -> None:
    short = TrainConfig(**{**TINY.__dict__, "max_epochs": 2})
    a, b = train(short, progress=False), train(short, progress=False)
    c = train(TrainConfig(**{**short.__dict__, "seed": 1}), progress=False)
    assert a.metrics["val_loss"] == b.metrics["val_loss"]
    assert a.metrics["val_loss"] != c.metrics["val_loss"]


def test_early_stopping_keeps_the_best_epoch() -> None:
    config = TrainConfig(**{**TINY.__dict__, "max_epochs": 30, "patience": 1, "lr": 0.05})
    result = train(config, progress=False)
    val = result.history["val_loss"]
    assert len(val) < 30  # stopped early
    assert result.metrics["best_epoch"] == int(np.argmin(val)) + 1
    assert len(val) == result.metrics["best_epoch"] + 1  # one epoch of patience


def test_cli_train_writes_outputs_and_exports(tmp_path: Path) -> None:
    run, repo = tmp_path / "run", tmp_path / "repo"
    argv = ["train", *TINY_ARGS, "--out", str(run), "--export", str(repo), "--name", "sine-gru"]
    assert main(argv) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("train_loss", "val_loss", "test_loss", "test_mae", "naive_mae"):
        assert np.isfinite(metrics[key])
    for png in ("loss.png", "forecast.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    version = repo / "sine-gru" / "1"
    assert sorted(p.name for p in version.iterdir()) == [
        "checkpoint.pt",
        "metrics.json",
        "model.json",
        "model.onnx",
    ]
    spec = load_spec(version)
    assert spec.autoregressive and spec.cell == "gru"
    assert spec.training["config"]["hidden_size"] == 8
    assert spec.training["metrics"]["test_mae"] == metrics["test_mae"]
    assert spec.training["command"].startswith("seqserve train --data sine")
    # The exported graph computes what the checkpoint beside it computes.
    module = checkpoint.load(version)
    x = load_series(TINY).values[None, :300]  # (1, T, 1)
    y_onnx = ort_session(version / "model.onnx").run(
        None, {"x": x, "h0": np.zeros((1, 1, 8), np.float32)}
    )[0]
    with torch.no_grad():
        y_torch = module(torch.from_numpy(x))[0].numpy()
    assert float(np.abs(y_onnx - y_torch).max()) <= 1e-5


def test_cli_export_of_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = ServingModule(Forecaster("lstm", 1, 4), Normalization.identity(1, 1))
    checkpoint.save(tmp_path / "c.pt", module, autoregressive=True, provenance={"note": "x"})
    repo = tmp_path / "repo"
    assert main(["export", str(tmp_path / "c.pt"), "--repository", str(repo), "--name", "m"]) == 0
    spec = load_spec(repo / "m" / "1")
    assert spec.training["note"] == "x" and spec.cell == "lstm"
    assert (repo / "m" / "1" / "checkpoint.pt").exists()
    capsys.readouterr()
    assert main(["export", str(tmp_path / "missing.pt"), "--name", "m"]) == 2
    assert "seqserve export: cannot read checkpoint" in capsys.readouterr().err
