"""The bundled models, served, equal their PyTorch checkpoints on the real CO2 series."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from seqserve.client import Client
from seqserve.models.checkpoint import load
from seqserve.models.data import load_co2
from seqserve.models.parity import DEFAULT_TOLERANCE, excess_diff, max_abs_diff
from seqserve.settings import DEFAULT_REPOSITORY, ServerSettings
from tests.grpc.harness import ServerThread
from tests.support import torch_reference, torch_rollout

BUNDLED = ("co2-lstm", "co2-gru")
ROLLOUT_TOLERANCE = 4 * float(np.spacing(np.float32(400.0)))  # 1.2e-4 ppm: 4 float32 steps


@pytest.fixture(scope="module")
def bundled() -> Iterator[ServerThread]:
    with ServerThread(ServerSettings()) as server:  # the default repository
        yield server


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_model_matches_its_checkpoint(bundled: ServerThread, name: str) -> None:
    x = load_co2().values  # (N, 1) ppm, 2284 weeks
    rng = np.random.default_rng(len(name))
    cuts = np.cumsum(rng.integers(1, 120, size=len(x)))
    chunks = np.split(x, cuts[cuts < len(x)])
    with Client(bundled.target) as client:
        info = client.model_info(name)
        assert info.autoregressive and info.input_size == info.output_size == 1
        module = load(DEFAULT_REPOSITORY / name / info.version / "checkpoint.pt")
        with client.session(name) as s:
            got = np.concatenate(list(s.stream(chunks)))  # (N, 1)
            forecast = s.forecast(52)
    want = torch_reference(module, x)
    # Raw ppm near 370 are float32 steps of 3.05e-5 apart: the export's parity rule
    # allows one such step beyond the tolerance (models.parity).
    assert excess_diff(got, want) <= DEFAULT_TOLERANCE, max_abs_diff(got, want)
    # A forecast feeds each prediction back as the next input, so such a step can
    # carry into the next predictions: the same rule, with a few steps' room.
    rollout = torch_rollout(module, x, 52)
    assert excess_diff(forecast, rollout) <= ROLLOUT_TOLERANCE, max_abs_diff(forecast, rollout)
    # a trained forecaster: one week ahead beats "same as last week" on the whole series
    assert np.abs(got[:-1] - x[1:]).mean() < np.abs(x[:-1] - x[1:]).mean()
