"""The model contract: the JSON spec that travels beside every model.onnx.

This module is the seam between models/ (which writes specs at export) and
service/ (which reads them at load). It imports neither torch nor ONNX Runtime.

A repository holds `<repository>/<name>/<version>/model.onnx` and `model.json`;
the folder names give the model's name and version, the spec gives everything
else the server needs: the input/output names and sizes, the recurrent state
tensors (which output feeds which input, their shapes and batch axes), the
cell, the sizes and the training provenance. Normalisation is baked into the
graph; the spec records its statistics for people, not for the server.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

SPEC_FORMAT = "seqserve.model/v1"
SPEC_FILE = "model.json"
ONNX_FILE = "model.onnx"
# The spec's JSON Schema, versioned with SPEC_FORMAT (published with the package).
SCHEMA_FILE = Path(__file__).with_name("schemas") / "model-v1.schema.json"


class SpecError(ValueError):
    """A model.json that does not follow the contract."""


@dataclass(frozen=True)
class StateSpec:
    """One recurrent state tensor, fed back from `output` to `input`."""

    input: str  # graph input that takes the state, e.g. "h0"
    output: str  # graph output that gives the next state, e.g. "hn"
    shape: tuple[int, ...]  # full shape with the batch axis written as -1
    batch_axis: int

    def per_session_shape(self) -> tuple[int, ...]:
        """The shape of one session's slice (the batch axis removed)."""
        return tuple(d for i, d in enumerate(self.shape) if i != self.batch_axis)

    def per_session_size(self) -> int:
        n = 1
        for d in self.per_session_shape():
            n *= d
        return n


@dataclass(frozen=True)
class ModelSpec:
    cell: str
    input_size: int
    output_size: int
    hidden_size: int
    num_layers: int
    states: tuple[StateSpec, ...]
    autoregressive: bool
    parameters: int
    macs_per_step: int
    input_name: str = "x"  # float32 (batch, time, input_size)
    output_name: str = "y"  # float32 (batch, time, output_size)
    normalization: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    format: str = SPEC_FORMAT

    def state_bytes_per_session(self) -> int:
        """float32 bytes of recurrent state one session holds."""
        return 4 * sum(s.per_session_size() for s in self.states)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["states"] = [{**asdict(s), "shape": list(s.shape)} for s in self.states]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        fmt = d.get("format", "")
        if fmt != SPEC_FORMAT:
            raise SpecError(f"spec format: expected {SPEC_FORMAT!r}, got {fmt!r}")
        check_schema(d)
        try:
            states = tuple(
                StateSpec(
                    input=str(s["input"]),
                    output=str(s["output"]),
                    shape=tuple(int(x) for x in s["shape"]),
                    batch_axis=int(s["batch_axis"]),
                )
                for s in d["states"]
            )
            spec = cls(
                cell=str(d["cell"]),
                input_size=int(d["input_size"]),
                output_size=int(d["output_size"]),
                hidden_size=int(d["hidden_size"]),
                num_layers=int(d["num_layers"]),
                states=states,
                autoregressive=bool(d["autoregressive"]),
                parameters=int(d["parameters"]),
                macs_per_step=int(d["macs_per_step"]),
                input_name=str(d.get("input_name", "x")),
                output_name=str(d.get("output_name", "y")),
                normalization=dict(d.get("normalization", {})),
                training=dict(d.get("training", {})),
                format=fmt,
            )
        except (KeyError, TypeError) as exc:
            raise SpecError(f"spec is missing or mistypes a field: {exc!r}") from exc
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.input_size < 1 or self.output_size < 1:
            raise SpecError(
                "input_size and output_size must be >= 1, "
                f"got {self.input_size} and {self.output_size}"
            )
        names = [self.input_name, self.output_name]
        for s in self.states:
            if not 0 <= s.batch_axis < len(s.shape):
                raise SpecError(
                    f"state {s.input!r}: batch_axis {s.batch_axis} outside shape {list(s.shape)}"
                )
            if s.shape[s.batch_axis] != -1:
                raise SpecError(
                    f"state {s.input!r}: expected -1 at batch_axis {s.batch_axis}, "
                    f"got shape {list(s.shape)}"
                )
            if any(d < 1 for i, d in enumerate(s.shape) if i != s.batch_axis):
                raise SpecError(
                    f"state {s.input!r}: non-batch dims must be >= 1, got {list(s.shape)}"
                )
            names += [s.input, s.output]
        if len(set(names)) != len(names):
            raise SpecError(f"input, output and state names must be distinct, got {names}")
        if self.autoregressive and self.input_size != self.output_size:
            raise SpecError(
                "an autoregressive model feeds its output back as input: expected "
                f"input_size == output_size, got {self.input_size} and {self.output_size}"
            )


@functools.cache
def _validator() -> Callable[[Any], Any]:
    import fastjsonschema  # compiled once: a spec is checked at every load and reload

    return cast(Callable[[Any], Any], fastjsonschema.compile(json.loads(SCHEMA_FILE.read_text())))


def check_schema(d: dict[str, Any]) -> None:
    """SpecError naming the field when `d` does not follow the schema (SCHEMA_FILE)."""
    import fastjsonschema

    try:
        _validator()(d)
    except fastjsonschema.JsonSchemaValueException as exc:
        field_path = exc.path[1:] if exc.path and exc.path[0] == "data" else exc.path
        where = "".join(f"[{p}]" if str(p).isdigit() else f".{p}" for p in field_path)
        got = f", got {exc.value!r}" if exc.rule not in ("required", "additionalProperties") else ""
        what = exc.message.replace(exc.name, "").strip() if exc.name else exc.message
        raise SpecError(f"model.json{where or ''}: {what}{got}") from None


def load_spec(path: Path) -> ModelSpec:
    """Read and validate a model.json (or the model.json inside a version folder)."""
    if path.is_dir():
        path = path / SPEC_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SpecError(f"cannot read spec {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"spec {path}: expected a JSON object, got {type(data).__name__}")
    return ModelSpec.from_dict(data)


def write_spec(spec: ModelSpec, path: Path) -> None:
    spec.validate()
    if path.is_dir():
        path = path / SPEC_FILE
    path.write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True) + "\n")
