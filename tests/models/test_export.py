"""Export: what it writes into the spec and the graph, what it refuses, and a quiet runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import seqserve.models.export as export_mod
from seqserve.core.spec import load_spec
from seqserve.models.export import ExportError, check_graph, export_model
from seqserve.models.networks import Forecaster, Normalization, ServingModule
from tests.models.conftest import Exported, make_module, ort_session


def test_spec_describes_the_graph(small_lstm: Exported) -> None:
    spec = load_spec(small_lstm.version_dir)
    assert spec == small_lstm.spec
    model = onnx.load(str(small_lstm.version_dir / "model.onnx"))
    inputs = {v.name: v for v in model.graph.input}
    outputs = {v.name: v for v in model.graph.output}
    assert list(inputs) == ["x", "h0", "c0"]
    assert list(outputs) == ["y", "hn", "cn"]
    assert [(s.input, s.output, s.batch_axis) for s in spec.states] == [
        ("h0", "hn", 1),
        ("c0", "cn", 1),
    ]
    for s in spec.states:
        dims = inputs[s.input].type.tensor_type.shape.dim
        assert [d.dim_value for d in dims] == [2, 0, 16]  # (L, batch, H), batch symbolic
        assert dims[s.batch_axis].dim_param
    x_dims = inputs["x"].type.tensor_type.shape.dim
    y_dims = outputs["y"].type.tensor_type.shape.dim
    assert x_dims[0].dim_param and x_dims[1].dim_param and x_dims[2].dim_value == 2
    assert y_dims[0].dim_param and y_dims[1].dim_param and y_dims[2].dim_value == 1


def test_spec_counts_parameters_and_multiply_adds(small_lstm: Exported) -> None:
    forecaster = small_lstm.module.forecaster
    params = forecaster.state_dict()
    assert small_lstm.spec.parameters == sum(p.numel() for p in params.values())
    # One step uses every weight-matrix entry exactly once; biases are additions.
    weights = sum(p.numel() for name, p in params.items() if "weight" in name)
    assert small_lstm.spec.macs_per_step == weights


def test_spec_records_normalisation_and_parity(small_lstm: Exported) -> None:
    norm = small_lstm.module.normalization
    spec = small_lstm.spec
    assert spec.normalization["input_mean"] == pytest.approx(norm.input_mean.tolist())
    assert spec.normalization["target_std"] == pytest.approx(norm.target_std.tolist())
    parity = spec.training["export"]["parity"]
    assert parity["tolerance"] == 1e-5
    assert set(parity["max_abs_diff"]) == {"y", "hn", "cn"}
    assert 0.0 <= max(parity["max_excess_over_float32_spacing"].values()) <= 1e-5
    assert spec.normalization["residual"] is False


def test_normalisation_is_baked_into_the_graph(small_lstm: Exported) -> None:
    """Raw inputs give raw outputs: the graph equals the module with its scaling,
    and differs from the bare network fed the same numbers."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 20, 2)).astype(np.float32)  # (B, T, F)
    state = tuple(np.zeros((2, 1, 16), np.float32) for _ in range(2))
    y, _ = small_lstm.run(x, state)
    with torch.no_grad():
        y_module = small_lstm.module(torch.from_numpy(x))[0].numpy()
        y_bare = small_lstm.module.forecaster(torch.from_numpy(x))[0].numpy()
    assert float(np.abs(y - y_module).max()) <= 1e-5
    assert float(np.abs(y - y_bare).max()) > 1e-2


def test_ordinary_calls_log_no_warnings(
    small_lstm: Exported, capfd: pytest.CaptureFixture[str]
) -> None:
    session = ort_session(small_lstm.version_dir / "model.onnx", log_severity=0)
    for batch, time in [(1, 1), (1, 2), (3, 1), (5, 17), (2, 300)]:
        feeds = {
            "x": np.zeros((batch, time, 2), np.float32),
            "h0": np.zeros((2, batch, 16), np.float32),
            "c0": np.zeros((2, batch, 16), np.float32),
        }
        y, hn, _ = session.run(None, feeds)
        assert y.shape == (batch, time, 1) and hn.shape == (2, batch, 16)
    assert "[W:" not in capfd.readouterr().err


def test_warning_capture_sees_a_pinned_time_axis(
    small_lstm: Exported, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Control for the test above: a graph whose output time axis is pinned (what the
    dynamo exporter produced) makes ONNX Runtime warn, and check_graph refuses it."""
    model = onnx.load(str(small_lstm.version_dir / "model.onnx"))
    y = next(v for v in model.graph.output if v.name == "y")
    y.type.tensor_type.shape.dim[1].dim_value = 5  # pin time to 5
    with pytest.raises(ExportError, match=r"graph outputs: expected .*'time'"):
        check_graph(model, small_lstm.spec)
    path = tmp_path / "pinned.onnx"
    onnx.save(model, str(path))
    session = ort_session(path)
    capfd.readouterr()
    feeds = {
        "x": np.zeros((1, 7, 2), np.float32),
        "h0": np.zeros((2, 1, 16), np.float32),
        "c0": np.zeros((2, 1, 16), np.float32),
    }
    session.run(None, feeds)
    assert "[W:" in capfd.readouterr().err


def test_bidirectional_forecaster_is_refused() -> None:
    with pytest.raises(ValueError, match="allowed: bidirectional=False"):
        Forecaster("lstm", 1, 8, bidirectional=True)


def test_unknown_cell_lists_the_allowed_ones() -> None:
    with pytest.raises(
        ValueError, match="unknown cell 'transformer': expected one of rnn, gru, lstm"
    ):
        Forecaster("transformer", 1, 8)


def test_export_refuses_a_bidirectional_layer(tmp_path: Path) -> None:
    module = make_module("gru", 1, 1, 8, 1, seed=0)
    module.forecaster.rnn = nn.GRU(1, 8, 1, batch_first=True, bidirectional=True)
    with pytest.raises(ExportError, match="cannot export a bidirectional layer"):
        export_model(module, tmp_path / "m" / "1", autoregressive=True)
    assert not (tmp_path / "m").exists()


def test_export_refuses_a_layer_that_does_not_match_its_config(tmp_path: Path) -> None:
    module = make_module("lstm", 2, 1, 8, 1, seed=0)
    module.forecaster.rnn = nn.LSTM(1, 8, 3, batch_first=True)
    with pytest.raises(ExportError, match=r"expected \(1, 8, 2\) from the config, got \(1, 8, 3\)"):
        export_model(module, tmp_path / "m" / "1", autoregressive=True)


def test_export_refuses_weights_changed_after_tracing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = make_module("lstm", 1, 1, 8, 1, seed=0)
    real_trace = export_mod._trace

    def trace_then_tamper(*args: Any) -> None:
        real_trace(*args)
        with torch.no_grad():
            module.forecaster.head.bias += 0.01

    monkeypatch.setattr(export_mod, "_trace", trace_then_tamper)
    with pytest.raises(
        ExportError, match=r"ONNX output 'y' differs from PyTorch .* > tolerance 1e-05"
    ):
        export_model(module, tmp_path / "m" / "1", autoregressive=True)
    assert not (tmp_path / "m").exists()


def test_export_refuses_a_forward_the_trace_cannot_follow(tmp_path: Path) -> None:
    """A monkeypatched forward with Python-side state: the trace freezes one value,
    so ONNX no longer computes what the module computes."""
    module = make_module("rnn", 1, 1, 8, 1, seed=0)
    original = module.forward
    calls = [0]

    def forward(
        x: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        calls[0] += 1
        y, new_state = original(x, state)
        return y + calls[0], new_state

    module.forward = forward  # type: ignore[method-assign]
    with pytest.raises(ExportError, match="not writing a model that does not compute"):
        export_model(module, tmp_path / "m" / "1", autoregressive=False)
    assert not (tmp_path / "m").exists()


def test_export_refuses_a_mismatched_autoregressive_claim(tmp_path: Path) -> None:
    module = make_module("gru", 1, 2, 8, 1, seed=0)
    with pytest.raises(ExportError, match="expected input_size == output_size, got 2 and 1"):
        export_model(module, tmp_path / "m" / "1", autoregressive=True)


def test_normalisation_rejects_a_zero_std() -> None:
    with pytest.raises(ValueError, match=r"input_std must be > 0, got \[0.0\]"):
        Normalization([0.0], [0.0], [0.0], [1.0])


def test_export_restores_training_mode(tmp_path: Path) -> None:
    module = ServingModule(Forecaster("gru", 1, 4, 2, dropout=0.5), Normalization.identity(1, 1))
    module.train()
    export_model(module, tmp_path / "m" / "1", autoregressive=True)
    assert module.training
