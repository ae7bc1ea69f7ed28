"""Model runtime: a repository folder loaded into ONNX Runtime sessions.

Layout: `<repository>/<name>/<version>/model.onnx` + `model.json` (walked by
seqserve.core.repository). Every version of every model is loaded at startup and
checked against its spec; a broken folder fails the whole load with a message
naming the model and version. A server that silently skips a model it was
asked to serve is worse than one that refuses to start: the operator finds out
from a crash at deploy time rather than from clients getting NOT_FOUND later.
"""

from __future__ import annotations

import builtins
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from seqserve.core.errors import NotFound, quoted
from seqserve.core.repository import (
    ModelLoadError,
    VersionFolder,
    read_version,
    scan,
    version_key,
)
from seqserve.core.spec import ONNX_FILE, ModelSpec

__all__ = ["LoadedModel", "ModelEntry", "ModelLoadError", "ModelRegistry", "version_key"]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
# Model-call timing at load (LoadedModel._measure): calls run and dropped, then timed.
WARMUP_CALLS = 5
MEASURED_CALLS = 9


@dataclass(frozen=True)
class ModelEntry:
    name: str
    versions: list[str]  # ascending: numeric versions by number, after any non-numeric
    latest: str  # what an empty version selects


@functools.cache
def _quiet_runtime() -> None:
    """Turn ONNX Runtime's telemetry off, once, before the first session is made.

    A server should not report home; and on a read-only root, telemetry warns
    at start that it cannot store a device id.
    """
    ort.disable_telemetry_events()


def session_options(threads: int) -> ort.SessionOptions:
    """Options for a server that shares two cores with its event loop."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning threads would steal the core the event loop needs between calls.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only; ORT's warnings are not actionable here
    return opts


class LoadedModel:
    """One model version: its spec and its InferenceSession.

    `run` is thread-safe (ORT allows concurrent `run` calls on one session) and
    releases the GIL while the graph executes; the batcher calls it from a worker
    thread.
    """

    def __init__(self, name: str, version: str, spec: ModelSpec, path: Path, threads: int) -> None:
        self.name = name
        self.version = version
        self.spec = spec
        self.path = path
        where = f"model {name}/{version}"
        _quiet_runtime()
        try:
            self._session = ort.InferenceSession(
                str(path / ONNX_FILE), session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for unreadable graphs
            raise ModelLoadError(f"{where}: cannot load {path / ONNX_FILE}: {exc}") from exc
        self._output_names = [spec.output_name, *(s.output for s in spec.states)]
        check_graph(self._session, spec, where)
        self._smoke_test(where)
        self.call_s, self.row_step_s = self._measure()

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}"

    def run(self, x: F32, states: Sequence[F32]) -> tuple[F32, list[F32]]:
        """One forward pass: x (B, T, F) and the states in spec layout -> y (B, T, O), states."""
        feeds: dict[str, Any] = {self.spec.input_name: x}
        for s, value in zip(self.spec.states, states, strict=True):
            feeds[s.input] = value
        y, *new_states = self._session.run(self._output_names, feeds)
        return y, new_states

    def estimate(self, row_steps: int, calls: int = 1) -> float:
        """Predicted seconds for `calls` model calls over `row_steps` rows x steps in all."""
        return calls * self.call_s + row_steps * self.row_step_s

    def _measure(self) -> tuple[float, float]:
        """Fixed seconds per call and marginal seconds per row-step (a few ms of calls).

        What the model costs, not what the machine added: the first calls of a
        fresh session run slower (seen: 141, 49, 59, 63 us before a steady 37 us
        at B=1), so they are dropped; the rest are timed in this thread's CPU
        seconds (ORT computes on the calling thread with one intra-op thread),
        which a busy neighbour on a shared machine does not inflate as it does
        wall time, and the fastest is taken. With the wall-clock median of
        seven, first calls counted, a B=1 estimate of 37 us of work read 45 to
        85 us from one start to the next, and a server whose estimate fell
        above the inline bound hopped to the worker thread for every step.
        """
        small = self.zero_states(1), np.zeros((1, 1, self.spec.input_size), np.float32)
        wide = self.zero_states(64), np.zeros((64, 1, self.spec.input_size), np.float32)
        timings = {}
        # Where the thread clock ticks coarsely (Windows: 15.6 ms), wall time it is.
        fine = time.get_clock_info("thread_time").resolution <= 1e-6
        clock = time.thread_time if fine else time.perf_counter
        for name, (states, x) in (("small", small), ("wide", wide)):
            for _ in range(WARMUP_CALLS):
                self.run(x, states)
            runs = []
            for _ in range(MEASURED_CALLS):
                t0 = clock()
                self.run(x, states)
                runs.append(clock() - t0)
            timings[name] = min(runs)
        per_row = max(0.0, (timings["wide"] - timings["small"]) / 63)
        return timings["small"], per_row

    def zero_states(self, batch: int) -> list[F32]:
        return [
            np.zeros(tuple(batch if d == -1 else d for d in s.shape), np.float32)
            for s in self.spec.states
        ]

    def _smoke_test(self, where: str) -> None:
        """Run B=2, T=3 from zero state: proves the batch and time axes are dynamic."""
        batch, steps = 2, 3
        x = np.zeros((batch, steps, self.spec.input_size), np.float32)  # (B, T, F)
        try:
            y, states = self.run(x, self.zero_states(batch))
        except Exception as exc:
            raise ModelLoadError(
                f"{where}: a step of batch {batch}, time {steps} from zero state failed: {exc}"
            ) from exc
        want_y = (batch, steps, self.spec.output_size)
        if y.shape != want_y or y.dtype != np.float32:
            raise ModelLoadError(
                f"{where}: output {self.spec.output_name!r}: expected float32 {list(want_y)}, "
                f"got {y.dtype} {list(y.shape)}"
            )
        for s, value in zip(self.spec.states, states, strict=True):
            want = tuple(batch if d == -1 else d for d in s.shape)
            if value.shape != want or value.dtype != np.float32:
                raise ModelLoadError(
                    f"{where}: state output {s.output!r}: expected float32 {list(want)}, "
                    f"got {value.dtype} {list(value.shape)}"
                )


def _dims(arg: Any) -> list[int | str | None]:
    return list(arg.shape)


def _check_tensor(
    where: str, kind: str, arg: Any, expected: Sequence[int | None], fixed: Sequence[bool]
) -> None:
    """Compare a graph tensor with the spec: element type, rank, and every fixed dim."""
    if arg.type != "tensor(float)":
        raise ModelLoadError(
            f"{where}: {kind} {arg.name!r}: expected tensor(float), got {arg.type}"
        )
    dims = _dims(arg)
    if len(dims) != len(expected):
        raise ModelLoadError(
            f"{where}: {kind} {arg.name!r}: expected rank {len(expected)} "
            f"{list(expected)}, got rank {len(dims)} {dims}"
        )
    for i, (got, want, is_fixed) in enumerate(zip(dims, expected, fixed, strict=True)):
        # A symbolic dim (str or None) can take any value; the smoke test checks it.
        if is_fixed and isinstance(got, int) and got != want:
            raise ModelLoadError(
                f"{where}: {kind} {arg.name!r} dim {i}: expected {want}, got {got} "
                f"(spec {list(expected)}, graph {dims})"
            )


def check_graph(session: ort.InferenceSession, spec: ModelSpec, where: str) -> None:
    """Check that the graph's inputs and outputs are those the spec describes."""
    inputs = {a.name: a for a in session.get_inputs()}
    outputs = {a.name: a for a in session.get_outputs()}
    want_inputs = [spec.input_name, *(s.input for s in spec.states)]
    want_outputs = [spec.output_name, *(s.output for s in spec.states)]
    missing_in = [n for n in want_inputs if n not in inputs]
    missing_out = [n for n in want_outputs if n not in outputs]
    if missing_in or missing_out:
        raise ModelLoadError(
            f"{where}: spec names inputs {want_inputs} and outputs {want_outputs}; "
            f"graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}"
        )
    extra = sorted(set(inputs) - set(want_inputs))
    if extra:
        raise ModelLoadError(
            f"{where}: graph has inputs the spec does not feed: {extra} "
            f"(expected only {want_inputs})"
        )
    io = [(spec.input_name, inputs, spec.input_size), (spec.output_name, outputs, spec.output_size)]
    for name, args, size in io:
        kind = "input" if args is inputs else "output"
        # (B, T, F): only the feature dim is fixed.
        _check_tensor(where, kind, args[name], [None, None, size], [False, False, True])
    for s in spec.states:
        fixed = [i != s.batch_axis for i in range(len(s.shape))]
        _check_tensor(where, "state input", inputs[s.input], s.shape, fixed)
        _check_tensor(where, "state output", outputs[s.output], s.shape, fixed)


def load_version(folder: VersionFolder, ort_threads: int) -> LoadedModel:
    """Load and check one version folder as startup does (ModelLoadError if it fails)."""
    m = LoadedModel(folder.name, folder.version, read_version(folder), folder.path, ort_threads)
    log.info(
        "loaded model %s (%s, input %d, output %d, hidden %d x %d layers, %d parameters)",
        m.label,
        m.spec.cell,
        m.spec.input_size,
        m.spec.output_size,
        m.spec.hidden_size,
        m.spec.num_layers,
        m.spec.parameters,
    )
    return m


class ModelRegistry:
    """Every served model version, by name and version.

    What is served changes on a reload (seqserve.core.reload): `add` and `remove`
    change the served set, and a removed version's LoadedModel lives on with the
    sessions that still use it.
    """

    def __init__(
        self, models: Sequence[LoadedModel], repository: Path | None = None, ort_threads: int = 1
    ) -> None:
        self.repository = repository  # where `load` read the models (None: built in code)
        self.ort_threads = ort_threads
        self._models: dict[str, dict[str, LoadedModel]] = {}
        self._entries: dict[str, ModelEntry] = {}
        for m in models:
            self._models.setdefault(m.name, {})[m.version] = m
        for name in list(self._models):
            self._index(name)

    def _index(self, name: str) -> None:
        """Rebuild one model's entry (its versions and latest) after a change."""
        versions = self._models.get(name)
        if not versions:
            self._models.pop(name, None)
            self._entries.pop(name, None)
            return
        ordered = sorted(versions, key=version_key)
        self._entries[name] = ModelEntry(name=name, versions=ordered, latest=ordered[-1])
        self._entries = dict(sorted(self._entries.items()))

    def add(self, model: LoadedModel) -> None:
        """Serve a version (and make it the model's latest if it sorts last)."""
        self._models.setdefault(model.name, {})[model.version] = model
        self._index(model.name)

    def remove(self, name: str, version: str) -> None:
        """Stop offering a version: it takes no new sessions and is no longer listed."""
        self._models.get(name, {}).pop(version, None)
        self._index(name)

    @classmethod
    def load(cls, repository: Path, ort_threads: int = 1) -> ModelRegistry:
        """Load every `<name>/<version>/` under `repository`; any broken folder fails the load."""
        models = [load_version(f, ort_threads) for f in scan(repository)]
        return cls(models, repository, ort_threads)

    def list(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def models(self) -> builtins.list[LoadedModel]:
        """Every loaded version of every model."""
        return [m for versions in self._models.values() for m in versions.values()]

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        """The named version, or the latest when version is None or empty."""
        entry = self._entries.get(name)
        if entry is None:
            raise NotFound(f"unknown model {quoted(name)}; available: {sorted(self._entries)}")
        chosen = version or entry.latest
        model = self._models[name].get(chosen)
        if model is None:
            raise NotFound(
                f"model {name!r} has no version {quoted(chosen)}; available: {entry.versions}"
            )
        return model
