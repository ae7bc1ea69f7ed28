"""Checkpoints rebuild the module from the file alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seqserve.models import checkpoint
from seqserve.models.checkpoint import CheckpointError
from seqserve.models.networks import Forecaster, Normalization, ServingModule


def test_round_trip_rebuilds_the_same_module(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = ServingModule(
        Forecaster("lstm", 1, 12, 2, dropout=0.2),
        Normalization([340.0], [17.0], [0.03], [0.5]),
        residual=True,
    )
    checkpoint.save(tmp_path / "c.pt", module, autoregressive=True, provenance={"seed": 7})
    loaded = checkpoint.read(tmp_path / "c.pt")
    assert loaded.autoregressive is True
    assert loaded.provenance == {"seed": 7}
    assert loaded.module.residual is True
    assert loaded.module.forecaster.config == module.forecaster.config
    assert not loaded.module.training
    x = torch.randn(2, 30, 1) * 10 + 340
    module.eval()
    with torch.no_grad():
        assert torch.equal(loaded.module(x)[0], module(x)[0])


def test_load_accepts_the_version_folder(tmp_path: Path) -> None:
    module = ServingModule(Forecaster("rnn", 2, 3, 1, 1), Normalization.identity(2, 1))
    checkpoint.save(tmp_path / "checkpoint.pt", module, autoregressive=False)
    assert checkpoint.load(tmp_path).forecaster.config.cell == "rnn"


def test_a_foreign_file_is_refused(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(
        CheckpointError, match=r"expected format 'seqserve\.checkpoint/v1', got None"
    ):
        checkpoint.load(tmp_path / "other.pt")


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path) -> None:
    module = ServingModule(Forecaster("gru", 1, 4), Normalization.identity(1, 1))
    checkpoint.save(tmp_path / "c.pt", module, autoregressive=True)
    payload = torch.load(tmp_path / "c.pt", weights_only=True)
    payload["config"]["hidden_size"] = 5
    torch.save(payload, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="does not rebuild"):
        checkpoint.load(tmp_path / "c.pt")


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        checkpoint.load(tmp_path / "nope.pt")
