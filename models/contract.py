"""Serving a recurrent model built elsewhere: describe it under the model contract.

seqserve serves any ONNX graph that takes the input (B, T, F) and the state tensors
and returns the output (B, T, O) and the next states, with model.json naming them.
`describe` builds that spec for a PyTorch module (or any object with `parameters()`,
or none) and its sizes; `write_model_json` checks it against the published schema
(seqserve/core/schemas/model-v1.schema.json) and writes it beside model.onnx:

    spec = describe(my_module, cell="lstm", input_size=3, output_size=1,
                    hidden_size=64, num_layers=2,
                    states=[("h0", "hn", (2, -1, 64), 1), ("c0", "cn", (2, -1, 64), 1)])
    write_model_json(spec, repository / "my-model" / "1")

Then `seqserve models check repository/my-model/1` runs the server's load checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from seqserve.core.spec import SPEC_FILE, ModelSpec, StateSpec, write_spec

# Gate matrices per cell, for the multiply-add estimate (a cell not listed counts one).
GATES: dict[str, int] = {"rnn": 1, "gru": 3, "lstm": 4}

State = tuple[str, str, Sequence[int], int]  # (graph input, graph output, shape, batch axis)


def macs_per_step(
    cell: str, input_size: int, hidden_size: int, num_layers: int, output_size: int
) -> int:
    """Multiply-adds of one step of one sequence: the gate matrices of every layer and a
    linear head from the last hidden state (elementwise work is left out)."""
    total = 0
    for layer in range(num_layers):
        fan_in = input_size if layer == 0 else hidden_size
        total += GATES.get(cell, 1) * hidden_size * (fan_in + hidden_size)
    return total + hidden_size * output_size


def describe(
    module: Any,
    *,
    cell: str,
    input_size: int,
    output_size: int,
    hidden_size: int,
    num_layers: int,
    states: Iterable[State],
    autoregressive: bool = False,
    input_name: str = "x",
    output_name: str = "y",
    parameters: int | None = None,
    training: dict[str, Any] | None = None,
) -> ModelSpec:
    """The spec of a model: its sizes, its graph's names, its state tensors (with -1 at
    the batch axis), the parameter count (from `module.parameters()` unless given)."""
    if parameters is None:
        parameters = sum(int(p.numel()) for p in module.parameters()) if module is not None else 0
    spec = ModelSpec(
        cell=cell,
        input_size=input_size,
        output_size=output_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        states=tuple(
            StateSpec(input=i, output=o, shape=tuple(int(d) for d in shape), batch_axis=axis)
            for i, o, shape, axis in states
        ),
        autoregressive=autoregressive,
        parameters=parameters,
        macs_per_step=macs_per_step(cell, input_size, hidden_size, num_layers, output_size),
        input_name=input_name,
        output_name=output_name,
        training=dict(training or {}),
    )
    return ModelSpec.from_dict(spec.to_dict())  # the schema and the contract's own checks


def write_model_json(spec: ModelSpec, version_dir: Path) -> Path:
    """Write model.json into a version folder (made if missing); its path."""
    version_dir.mkdir(parents=True, exist_ok=True)
    write_spec(spec, version_dir / SPEC_FILE)
    return version_dir / SPEC_FILE
