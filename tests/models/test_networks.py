"""The forecaster and the serving module, in PyTorch alone."""

from __future__ import annotations

import pytest
import torch

from seqserve.models.networks import Forecaster, Normalization, ServingModule


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_shapes_and_state_layout(cell: str) -> None:
    torch.manual_seed(0)
    net = Forecaster(cell, input_size=3, hidden_size=5, num_layers=2, output_size=4)
    y, state = net(torch.randn(6, 7, 3))  # (B, T, F)
    assert y.shape == (6, 7, 4)
    assert len(state) == (2 if cell == "lstm" else 1)
    assert all(s.shape == (2, 6, 5) for s in state)  # (L, B, H)
    assert all(float(s.abs().sum()) == 0.0 for s in net.init_state(6))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_continuing_from_a_state_equals_one_pass(cell: str) -> None:
    torch.manual_seed(1)
    net = Forecaster(cell, 2, 8, 3).eval()
    x = torch.randn(3, 40, 2)
    with torch.no_grad():
        y_full, s_full = net(x)
        y_a, s_a = net(x[:, :13])
        y_b, s_b = net(x[:, 13:], s_a)
    assert torch.allclose(torch.cat([y_a, y_b], dim=1), y_full, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(s_b, s_full, strict=True))


@pytest.mark.parametrize(("cell", "gates"), [("rnn", 1), ("gru", 3), ("lstm", 4)])
def test_parameter_count_matches_the_cell_equations(cell: str, gates: int) -> None:
    f, h, o, layers = 3, 10, 2, 2
    net = Forecaster(cell, f, h, layers, o)
    # Per layer: gates x H x (in + H) weights and two bias vectors of gates x H; then the head.
    expected = sum(gates * h * (fan_in + h) + 2 * gates * h for fan_in in (f, h)) + h * o + o
    assert net.parameter_count() == expected


def test_output_size_defaults_to_input_size() -> None:
    assert Forecaster("gru", 3, 4).config.output_size == 3


def test_serving_module_works_in_raw_units() -> None:
    torch.manual_seed(2)
    net = Forecaster("lstm", 2, 6, 1, 1).eval()
    norm = Normalization([10.0, -5.0], [2.0, 4.0], [100.0], [3.0])
    module = ServingModule(net, norm).eval()
    x_raw = torch.randn(2, 9, 2) * 3 + torch.tensor([10.0, -5.0])
    with torch.no_grad():
        y_raw, _ = module(x_raw)
        y_net, _ = net((x_raw - torch.tensor([10.0, -5.0])) / torch.tensor([2.0, 4.0]))
    assert torch.allclose(y_raw, y_net * 3.0 + 100.0, atol=1e-5)


def test_residual_module_adds_the_input() -> None:
    torch.manual_seed(3)
    net = Forecaster("gru", 1, 6).eval()
    norm = Normalization([300.0], [10.0], [0.1], [0.5])
    plain = ServingModule(net, norm).eval()
    residual = ServingModule(net, norm, residual=True).eval()
    x = torch.full((1, 5, 1), 350.0)
    with torch.no_grad():
        assert torch.allclose(residual(x)[0], plain(x)[0] + x)
    target = torch.full((1, 5, 1), 351.0)
    # The network's target is the normalised change: (1.0 - 0.1) / 0.5.
    assert torch.allclose(residual.target_in_network_units(x, target), torch.full((1, 5, 1), 1.8))


def test_residual_needs_matching_sizes() -> None:
    with pytest.raises(ValueError, match="expected input_size == output_size, got 2 and 1"):
        ServingModule(Forecaster("rnn", 2, 4, 1, 1), Normalization.identity(2, 1), residual=True)


def test_normalisation_size_must_match() -> None:
    with pytest.raises(ValueError, match="normalization input size: expected 2, got 1"):
        ServingModule(Forecaster("rnn", 2, 4, 1, 1), Normalization.identity(1, 1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_size": 0}, "hidden_size must be >= 1, got 0"),
        ({"num_layers": 0}, "num_layers must be >= 1, got 0"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_sizes_are_refused(kwargs: dict[str, float], message: str) -> None:
    args: dict[str, float] = {"input_size": 1, "hidden_size": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        Forecaster("lstm", **args)  # type: ignore[arg-type]
