"""One recurrent forecaster for every cell, and the module that is exported.

Shapes: B batch, T time, F input features, O outputs, L layers, H hidden.
State is kept in PyTorch's layout: LSTM (h, c) each (L, B, H); GRU/RNN (h,) (L, B, H).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from seqserve.models import contract

CELLS: tuple[str, ...] = ("rnn", "gru", "lstm")
# Gate blocks per cell: how many H x (in + H) matrices one layer multiplies per step.
GATES = contract.GATES
RNN_CLASSES: dict[str, type[nn.RNN] | type[nn.GRU] | type[nn.LSTM]] = {
    "rnn": nn.RNN,
    "gru": nn.GRU,
    "lstm": nn.LSTM,
}

State = tuple[Tensor, ...]


@dataclass(frozen=True)
class ForecasterConfig:
    """Everything needed to rebuild a Forecaster; travels with the weights."""

    cell: str
    input_size: int
    hidden_size: int
    num_layers: int = 1
    output_size: int = 1
    dropout: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ForecasterConfig:
        return cls(
            cell=str(d["cell"]),
            input_size=int(d["input_size"]),
            hidden_size=int(d["hidden_size"]),
            num_layers=int(d["num_layers"]),
            output_size=int(d["output_size"]),
            dropout=float(d["dropout"]),
        )


def state_names(cell: str) -> tuple[tuple[str, str], ...]:
    """(input, output) graph names of the state tensors, in state-tuple order."""
    return (("h0", "hn"), ("c0", "cn")) if cell == "lstm" else (("h0", "hn"),)


class Forecaster(nn.Module):
    """A stack of recurrent layers followed by a linear head applied at every step.

    `forward(x (B, T, F), state) -> (y (B, T, O), state)`; y[:, t] is the forecast
    made after seeing x[:, : t + 1]. Dropout acts between recurrent layers and
    before the head, during training only.
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        output_size: int | None = None,
        dropout: float = 0.0,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        if cell not in RNN_CLASSES:
            raise ValueError(f"unknown cell {cell!r}: expected one of {', '.join(CELLS)}")
        if bidirectional:
            raise ValueError(
                "bidirectional=True cannot be streamed one step at a time (the backward "
                "direction needs the future); allowed: bidirectional=False"
            )
        for name, value in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if output_size is not None and output_size < 1:
            raise ValueError(f"output_size must be >= 1, got {output_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.config = ForecasterConfig(
            cell=cell,
            input_size=input_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            output_size=input_size if output_size is None else output_size,
            dropout=dropout,
        )
        # PyTorch only applies its own dropout between layers (and warns for one layer).
        self.rnn: nn.RNNBase = RNN_CLASSES[cell](
            input_size,
            hidden_size,
            num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, self.config.output_size)

    @classmethod
    def from_config(cls, config: ForecasterConfig) -> Forecaster:
        return cls(
            config.cell,
            config.input_size,
            config.hidden_size,
            config.num_layers,
            config.output_size,
            config.dropout,
        )

    @property
    def cell(self) -> str:
        return self.config.cell

    def init_state(self, batch: int) -> State:
        """Zero state for `batch` sequences: LSTM (h, c), GRU/RNN (h,), each (L, B, H)."""
        weight = self.head.weight
        shape = (self.config.num_layers, batch, self.config.hidden_size)  # (L, B, H)
        n = 2 if self.cell == "lstm" else 1
        return tuple(torch.zeros(shape, dtype=weight.dtype, device=weight.device) for _ in range(n))

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        if state is None:
            state = self.init_state(x.shape[0])
        new_state: State
        if isinstance(self.rnn, nn.LSTM):
            out, (h, c) = self.rnn(x, (state[0], state[1]))  # out (B, T, H)
            new_state = (h, c)
        else:
            out, h = self.rnn(x, state[0])  # out (B, T, H)
            new_state = (h,)
        y = self.head(self.drop(out))  # (B, T, O)
        return y, new_state

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def macs_per_step(self) -> int:
        """Multiply-adds of the matrix products for one time step of one sequence.

        Per layer: gates x H x (input + H); plus the head H x O. Elementwise gate
        arithmetic and biases are left out (they are O(H), not O(H^2)).
        """
        c = self.config
        return contract.macs_per_step(
            c.cell, c.input_size, c.hidden_size, c.num_layers, c.output_size
        )


class Normalization(nn.Module):
    """Affine scaling between raw units and the network's units, per feature.

    x_norm = (x_raw - input_mean) / input_std;  y_raw = y_norm * target_std + target_mean.
    Buffers, not parameters: they are fixed from the training split and exported
    as constants in the graph.
    """

    input_mean: Tensor
    input_std: Tensor
    target_mean: Tensor
    target_std: Tensor

    def __init__(
        self,
        input_mean: Tensor | list[float],
        input_std: Tensor | list[float],
        target_mean: Tensor | list[float],
        target_std: Tensor | list[float],
    ) -> None:
        super().__init__()
        stats = {
            "input_mean": input_mean,
            "input_std": input_std,
            "target_mean": target_mean,
            "target_std": target_std,
        }
        for name, value in stats.items():
            t = torch.as_tensor(value, dtype=torch.float32).reshape(-1)  # (F,) or (O,)
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} must be finite, got {t.tolist()}")
            if name.endswith("_std") and not bool((t > 0).all()):
                raise ValueError(f"{name} must be > 0, got {t.tolist()}")
            self.register_buffer(name, t)
        if self.input_mean.shape != self.input_std.shape:
            raise ValueError(
                f"input_mean and input_std: expected equal sizes, got "
                f"{self.input_mean.numel()} and {self.input_std.numel()}"
            )
        if self.target_mean.shape != self.target_std.shape:
            raise ValueError(
                f"target_mean and target_std: expected equal sizes, got "
                f"{self.target_mean.numel()} and {self.target_std.numel()}"
            )

    @classmethod
    def identity(cls, input_size: int, output_size: int) -> Normalization:
        return cls([0.0] * input_size, [1.0] * input_size, [0.0] * output_size, [1.0] * output_size)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalization:
        return cls(d["input_mean"], d["input_std"], d["target_mean"], d["target_std"])

    def to_dict(self) -> dict[str, list[float]]:
        return {
            "input_mean": self.input_mean.tolist(),
            "input_std": self.input_std.tolist(),
            "target_mean": self.target_mean.tolist(),
            "target_std": self.target_std.tolist(),
        }

    def normalize_input(self, x_raw: Tensor) -> Tensor:
        return (x_raw - self.input_mean) / self.input_std  # (B, T, F)

    def normalize_target(self, y_raw: Tensor) -> Tensor:
        return (y_raw - self.target_mean) / self.target_std  # (B, T, O)

    def denormalize_target(self, y: Tensor) -> Tensor:
        return y * self.target_std + self.target_mean  # (B, T, O)


class ServingModule(nn.Module):
    """Raw units in, raw units out: exactly the module that is exported to ONNX.

    With `residual`, the network predicts the change from the current input, so
    y_raw = x_raw + denormalize(y); the target statistics are then those of the
    one-step differences. This keeps a trending series (CO2 rises ~1.5 ppm a
    year) from asking the network to extrapolate levels it never saw.
    """

    def __init__(
        self, forecaster: Forecaster, normalization: Normalization, *, residual: bool = False
    ) -> None:
        super().__init__()
        c = forecaster.config
        if normalization.input_mean.numel() != c.input_size:
            raise ValueError(
                f"normalization input size: expected {c.input_size}, "
                f"got {normalization.input_mean.numel()}"
            )
        if normalization.target_mean.numel() != c.output_size:
            raise ValueError(
                f"normalization target size: expected {c.output_size}, "
                f"got {normalization.target_mean.numel()}"
            )
        if residual and c.input_size != c.output_size:
            raise ValueError(
                "residual adds the input to the output: expected input_size == output_size, "
                f"got {c.input_size} and {c.output_size}"
            )
        self.forecaster = forecaster
        self.normalization = normalization
        self.residual = residual

    def init_state(self, batch: int) -> State:
        return self.forecaster.init_state(batch)

    def forward(self, x_raw: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        x = self.normalization.normalize_input(x_raw)  # (B, T, F)
        y, new_state = self.forecaster(x, state)  # (B, T, O)
        y_raw = self.normalization.denormalize_target(y)  # (B, T, O)
        if self.residual:
            y_raw = y_raw + x_raw
        return y_raw, new_state

    def target_in_network_units(self, x_raw: Tensor, y_raw: Tensor) -> Tensor:
        """What the network should output for raw targets y_raw given raw inputs x_raw."""
        if self.residual:
            y_raw = y_raw - x_raw
        return self.normalization.normalize_target(y_raw)  # (B, T, O)

    def describe_normalization(self) -> dict[str, Any]:
        return {**self.normalization.to_dict(), "residual": self.residual}
