"""What one benchmark run measures, and how long each load loop may run.

Two presets: the full run (the README's table, about seven minutes on a
2-core machine) and the smoke run (tiny models and windows, a few seconds,
proves in CI that every scenario works end to end).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    """One benchmark model: a random-weight forecaster of this cell and size."""

    cell: str
    hidden: int
    layers: int

    @property
    def name(self) -> str:
        return f"bench-{self.cell}-h{self.hidden}-l{self.layers}"


@dataclass(frozen=True)
class BenchConfig:
    smoke: bool
    input_size: int  # features per step (== output size: the models are autoregressive)
    hidden: int  # scenarios 1-4 and 6
    layers: int
    scale_hidden: int  # scenario 5
    cells: tuple[str, ...]  # scenario 6
    client_procs: int  # separate client processes driving the load
    warmup_s: float  # each load loop: traffic before the window, not counted
    window_s: float  # each load loop: the measured window
    rounds: int  # comparisons with the echo floor alternate echo/server this many times each
    max_messages: int  # each load loop: count bound per stream / per in-flight slot
    latency_window_s: float  # scenario 1 (and its repeats in 5 and 6)
    concurrency: tuple[int, ...]  # scenario 2
    starvation_targets: tuple[int, ...]  # concurrencies held to >= 0.8x echo (the first: CPU too)
    batch_sizes: tuple[int, ...]  # scenario 3
    inflight: tuple[int, ...]  # scenario 3
    chunk: int  # scenario 4: steps per message
    chunk_depth: int  # scenario 4: messages in flight when pipelined
    idle_sessions: int  # scenario 5: sessions to open (at most)
    idle_target: int  # scenario 5: the count the issue asks about (extrapolated to)
    create_budget_s: float  # scenario 5: time allowed for opening them
    creators: int  # scenario 5: concurrent CreateSession calls per client process
    floor_budget_s: float  # time per in-process ONNX Runtime floor measurement
    store_streams: int  # scenario 7: concurrent streams on each store
    store_rounds: int  # scenario 7: rounds per figure (its ratios are small differences)

    @property
    def main_model(self) -> ModelShape:
        return ModelShape("lstm", self.hidden, self.layers)

    @property
    def scale_model(self) -> ModelShape:
        return ModelShape("lstm", self.scale_hidden, self.layers)

    def cell_models(self) -> list[ModelShape]:
        return [ModelShape(c, self.hidden, self.layers) for c in self.cells]

    def all_models(self) -> list[ModelShape]:
        shapes = [self.main_model, self.scale_model, *self.cell_models()]
        return list(dict.fromkeys(shapes))  # unique, in order

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = BenchConfig(
    smoke=False,
    input_size=1,
    hidden=128,
    layers=2,
    scale_hidden=64,
    cells=("rnn", "gru", "lstm"),
    client_procs=2,
    warmup_s=0.5,
    window_s=2.0,
    rounds=2,
    max_messages=1_000_000,
    latency_window_s=2.0,
    concurrency=(10, 100, 1000),
    starvation_targets=(100, 1000),
    batch_sizes=(256, 1024),
    inflight=(1, 4),
    chunk=64,
    chunk_depth=2,
    idle_sessions=150_000,
    idle_target=1_000_000,
    create_budget_s=30.0,
    creators=128,
    floor_budget_s=0.6,
    store_streams=100,
    store_rounds=4,
)

SMOKE = replace(
    FULL,
    smoke=True,
    hidden=8,
    layers=2,
    scale_hidden=4,
    client_procs=2,
    warmup_s=0.1,
    window_s=0.3,
    rounds=1,
    max_messages=2_000,
    latency_window_s=0.3,
    concurrency=(2, 8),
    starvation_targets=(8,),
    batch_sizes=(8, 32),
    inflight=(1, 2),
    chunk=8,
    idle_sessions=300,
    create_budget_s=5.0,
    creators=8,
    floor_budget_s=0.05,
    store_streams=8,
    store_rounds=1,
)
