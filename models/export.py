"""Export a ServingModule to the model contract: model.onnx + model.json.

The exporter is torch.onnx's TorchScript tracer (`dynamo=False`), chosen on
purpose: for LSTM/GRU/RNN it writes one ONNX recurrent op per layer with
symbolic batch and time axes. The torch.export-based exporter (the default
since PyTorch 2.9) pinned the output time axis to the example's length here,
and ONNX Runtime then warns on every call at any other length. The graph check
below refuses such a graph.

Nothing is written unless the graph passes onnx's checker, has the contract's
names and dims, and ONNX Runtime matches PyTorch on random inputs at several
(batch, time) shapes within `tolerance` (the rule is in seqserve.models.parity).
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn
from torch.jit import TracerWarning  # type: ignore[attr-defined]

from seqserve.core.spec import ONNX_FILE, SPEC_FILE, ModelSpec, StateSpec, write_spec
from seqserve.models.networks import RNN_CLASSES, ServingModule, state_names
from seqserve.models.parity import excess_diff, max_abs_diff

OPSET = 17
# (batch, time) shapes checked against PyTorch before anything is written.
CHECK_SHAPES: tuple[tuple[int, int], ...] = ((1, 1), (1, 9), (3, 1), (4, 33), (2, 200))
BATCH_AXIS = 1  # of every state tensor: (L, B, H)


class ExportError(ValueError):
    """The module cannot be exported to the contract, or its ONNX graph does not match it."""


class _Flat(nn.Module):
    """Adapts (x, state tuple) -> (y, state tuple) to flat tensors for the ONNX graph."""

    def __init__(self, module: ServingModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        y, new_state = self.module(x, tuple(state))
        return (y, *new_state)


def check_streamable(module: nn.Module) -> None:
    """Refuse modules that cannot run step by step under the contract."""
    if not isinstance(module, ServingModule):
        raise ExportError(f"expected a ServingModule, got {type(module).__name__}")
    f = module.forecaster
    c = f.config
    rnn = f.rnn
    if rnn.bidirectional:
        raise ExportError(
            "cannot export a bidirectional layer: its backward direction reads the future, "
            "so it cannot be streamed one step at a time"
        )
    if not isinstance(rnn, RNN_CLASSES[c.cell]):
        raise ExportError(
            f"recurrent layer: expected {RNN_CLASSES[c.cell].__name__} for cell {c.cell!r}, "
            f"got {type(rnn).__name__}"
        )
    if not rnn.batch_first:
        raise ExportError("recurrent layer: expected batch_first=True, got batch_first=False")
    if rnn.proj_size != 0:
        raise ExportError(
            f"LSTM projections are not supported: expected proj_size=0, got {rnn.proj_size}"
        )
    got = (rnn.input_size, rnn.hidden_size, rnn.num_layers)
    want = (c.input_size, c.hidden_size, c.num_layers)
    if got != want:
        raise ExportError(
            f"recurrent layer (input_size, hidden_size, num_layers): expected {want} from the "
            f"config, got {got}"
        )


def build_spec(
    module: ServingModule, *, autoregressive: bool, training: dict[str, Any] | None = None
) -> ModelSpec:
    f = module.forecaster
    c = f.config
    shape = (c.num_layers, -1, c.hidden_size)  # (L, B, H) with B dynamic
    states = tuple(
        StateSpec(input=i, output=o, shape=shape, batch_axis=BATCH_AXIS)
        for i, o in state_names(c.cell)
    )
    spec = ModelSpec(
        cell=c.cell,
        input_size=c.input_size,
        output_size=c.output_size,
        hidden_size=c.hidden_size,
        num_layers=c.num_layers,
        states=states,
        autoregressive=autoregressive,
        parameters=f.parameter_count(),
        macs_per_step=f.macs_per_step(),
        normalization=module.describe_normalization(),
        training=dict(training or {}),
    )
    try:
        spec.validate()
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    return spec


def _trace(module: ServingModule, spec: ModelSpec, path: Path) -> None:
    c = module.forecaster.config
    x = torch.zeros(2, 5, c.input_size)  # (B, T, F) example; B and T are declared dynamic
    state = module.init_state(2)
    names_in = [spec.input_name, *(s.input for s in spec.states)]
    names_out = [spec.output_name, *(s.output for s in spec.states)]
    axes: dict[str, dict[int, str]] = {spec.input_name: {0: "batch", 1: "time"}}
    axes[spec.output_name] = {0: "batch", 1: "time"}
    for s in spec.states:
        axes[s.input] = {s.batch_axis: "batch"}
        axes[s.output] = {s.batch_axis: "batch"}
    with warnings.catch_warnings():
        # The TorchScript exporter is chosen deliberately (module docstring).
        ignore = warnings.filterwarnings
        ignore("ignore", "You are using the legacy TorchScript", DeprecationWarning)
        ignore("ignore", "The feature will be removed", DeprecationWarning)
        # nn.RNNBase's own input/state shape checks; the parity check below covers
        # whether the trace generalises to other shapes.
        ignore("ignore", category=TracerWarning, module=r"torch\.nn\.modules\.rnn")
        # Only applies when the initial state is not a graph input; here it is.
        ignore("ignore", "Exporting a model to ONNX with a batch_size other than 1")
        # eval() on the wrapper too: the exporter restores the wrapper's mode afterwards,
        # recursively, and a fresh module is in training mode (dropout on).
        torch.onnx.export(
            _Flat(module).eval(),
            (x, *state),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=names_in,
            output_names=names_out,
            dynamic_axes=axes,
        )


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def check_graph(model: onnx.ModelProto, spec: ModelSpec) -> None:
    """The graph has the contract's names, sizes and symbolic batch/time axes."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx checker rejected the graph: {exc}") from exc
    want_in: dict[str, list[int | str]] = {
        spec.input_name: ["batch", "time", spec.input_size],
        **{s.input: [d if d != -1 else "batch" for d in s.shape] for s in spec.states},
    }
    want_out: dict[str, list[int | str]] = {
        spec.output_name: ["batch", "time", spec.output_size],
        **{s.output: [d if d != -1 else "batch" for d in s.shape] for s in spec.states},
    }
    for kind, values, want in (
        ("inputs", model.graph.input, want_in),
        ("outputs", model.graph.output, want_out),
    ):
        got = {v.name: _dims(v) for v in values}
        if got != want:
            raise ExportError(
                f"graph {kind}: expected {want}, got {got} (a fixed number where "
                "'batch' or 'time' is expected would pin that axis to the example's length)"
            )
        for v in values:
            if v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
                raise ExportError(f"graph {kind} {v.name!r}: expected float32")


def check_parity(
    module: ServingModule, onnx_path: Path, spec: ModelSpec, tolerance: float
) -> dict[str, Any]:
    """Run ONNX Runtime and PyTorch on the same random inputs; raise if they differ.

    Returns the largest differences seen (see seqserve.models.parity for the rule).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    norm = module.normalization
    gen = torch.Generator().manual_seed(0)
    names = [spec.output_name, *(s.output for s in spec.states)]
    raw = dict.fromkeys(names, 0.0)
    excess = dict.fromkeys(names, 0.0)
    for batch, time in CHECK_SHAPES:
        # Inputs around the training data's scale; states like a running session's.
        noise = torch.randn(batch, time, spec.input_size, generator=gen)  # (B, T, F)
        x = norm.input_mean + norm.input_std * noise
        state = tuple(
            torch.randn(spec.num_layers, batch, spec.hidden_size, generator=gen) * 0.5  # (L, B, H)
            for _ in spec.states
        )
        with torch.no_grad():
            y_ref, state_ref = module(x, state)
        feeds = {spec.input_name: x.numpy()}
        feeds.update({s.input: t.numpy() for s, t in zip(spec.states, state, strict=True)})
        got = session.run(None, feeds)
        refs = [y_ref.numpy(), *(t.numpy() for t in state_ref)]
        for name, a, b in zip(names, got, refs, strict=True):
            if a.shape != b.shape:
                raise ExportError(
                    f"ONNX output {name!r} at (batch, time)=({batch}, {time}): expected shape "
                    f"{b.shape}, got {a.shape}"
                )
            raw[name] = max(raw[name], max_abs_diff(a, b))
            excess[name] = max(excess[name], excess_diff(a, b))
            if not excess[name] <= tolerance:
                raise ExportError(
                    f"ONNX output {name!r} differs from PyTorch at (batch, time)=({batch}, "
                    f"{time}): max abs diff {raw[name]:.3g} > tolerance {tolerance:.3g}; "
                    "not writing a model that does not compute what the module computes"
                )
    return {
        "rule": "|onnx - torch| <= tolerance + float32 spacing at the torch value",
        "tolerance": tolerance,
        "max_abs_diff": raw,
        "max_excess_over_float32_spacing": excess,
        "shapes_checked": [list(s) for s in CHECK_SHAPES],
    }


def export_model(
    module: ServingModule,
    version_dir: Path,
    *,
    autoregressive: bool,
    training: dict[str, Any] | None = None,
    tolerance: float = 1e-5,
) -> ModelSpec:
    """Write `version_dir/model.onnx` and `model.json`; raise ExportError when refused.

    Nothing is written to `version_dir` when the export is refused.
    """
    check_streamable(module)
    was_training = module.training
    module.eval()
    try:
        spec = build_spec(module, autoregressive=autoregressive, training=training)
        with tempfile.TemporaryDirectory(prefix="seqserve-export-") as tmp:
            onnx_path = Path(tmp) / ONNX_FILE
            _trace(module, spec, onnx_path)
            check_graph(onnx.load(str(onnx_path)), spec)
            parity = check_parity(module, onnx_path, spec, tolerance)
            training_info = dict(spec.training)
            training_info["export"] = {
                "exporter": "torch.onnx TorchScript (dynamo=False)",
                "opset": OPSET,
                "torch": str(torch.__version__),
                "onnxruntime": ort.__version__,
                "parity": parity,
            }
            spec = ModelSpec.from_dict({**spec.to_dict(), "training": training_info})
            write_spec(spec, Path(tmp) / SPEC_FILE)
            version_dir.mkdir(parents=True, exist_ok=True)
            for name in (ONNX_FILE, SPEC_FILE):
                shutil.copyfile(Path(tmp) / name, version_dir / name)
    finally:
        module.train(was_training)
    return spec
