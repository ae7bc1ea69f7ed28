"""The model floor: ONNX Runtime in this process, on the server's model, options and shapes.

The server cannot run a model faster than ORT alone does with the same
session options and thread count, so ORT's time for the same batch (B rows
of T steps) is what the server's model-bound figures are held against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from seqserve.core.runtime import session_options
from seqserve.core.spec import ONNX_FILE, ModelSpec

MIN_RUNS = 5


@dataclass(frozen=True)
class OrtFloor:
    model: str
    batch: int  # B
    steps: int  # T
    median_s: float  # one run
    p99_s: float
    runs: int

    @property
    def rows_per_s(self) -> float:
        """Session-steps per second: B * T rows per run."""
        return self.batch * self.steps / self.median_s


class OrtTimer:
    """One InferenceSession of a model version, timed at any (B, T)."""

    def __init__(self, name: str, version_dir: Path, spec: ModelSpec, threads: int = 1) -> None:
        self.name = name
        self.spec = spec
        self._session = ort.InferenceSession(
            str(version_dir / ONNX_FILE),
            session_options(threads),
            providers=["CPUExecutionProvider"],
        )
        self._outputs = [spec.output_name, *(s.output for s in spec.states)]

    def measure(self, batch: int, steps: int, budget_s: float) -> OrtFloor:
        """Median time of `session.run` at (B, T), from a warm session, within `budget_s`."""
        rng = np.random.default_rng(0)
        feeds = {
            self.spec.input_name: rng.standard_normal(
                (batch, steps, self.spec.input_size), np.float32
            )  # (B, T, F)
        }
        for s in self.spec.states:
            feeds[s.input] = np.zeros(tuple(batch if d == -1 else d for d in s.shape), np.float32)
        for _ in range(3):  # warm up: first runs allocate
            self._session.run(self._outputs, feeds)
        times: list[float] = []
        end = time.perf_counter() + budget_s
        while len(times) < MIN_RUNS or (time.perf_counter() < end and len(times) < 100_000):
            t0 = time.perf_counter()
            self._session.run(self._outputs, feeds)
            times.append(time.perf_counter() - t0)
        arr = np.asarray(times)
        return OrtFloor(
            model=self.name,
            batch=batch,
            steps=steps,
            median_s=float(np.median(arr)),
            p99_s=float(np.percentile(arr, 99)),
            runs=len(times),
        )
