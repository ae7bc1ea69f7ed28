"""Running one measurement and summarising it: the building blocks of the scenarios."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from seqserve.bench.config import BenchConfig, ModelShape
from seqserve.bench.drivers import BatchJob, LoadResult, StreamJob
from seqserve.bench.floors import OrtFloor
from seqserve.bench.pool import ClientPool
from seqserve.bench.procs import ServerProcess, cpu_seconds
from seqserve.bench.report import Row, percentiles_us
from seqserve.core.spec import ModelSpec


@dataclass
class Context:
    config: BenchConfig
    pool: ClientPool
    server: str  # HOST:PORT of the seqserve server under test
    echo: str  # HOST:PORT of the echo floor
    reference: str | None  # HOST:PORT of the inline reference (scenario 1), if started
    specs: dict[str, ModelSpec]
    ort: dict[tuple[str, int, int], OrtFloor]  # (model, B, T)
    say: Callable[[str], None]
    start_scale_server: Callable[[int], ServerProcess] | None  # None when --target is used
    pids: dict[str, int] = field(default_factory=dict)  # address -> pid of servers started here
    tls: dict[str, str] = field(default_factory=dict)  # address -> CA file, for servers on TLS
    # address -> CPU seconds of what serves it, where that is not one pid (a proxy's replicas)
    probes: dict[str, Callable[[], tuple[float, ...]]] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    samples: dict[str, dict[str, npt.NDArray[np.int64]]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, Measured] = field(default_factory=dict)  # for reuse between scenarios

    def cpu_probe(self, target: str) -> Callable[[], tuple[float, ...]] | None:
        if target in self.probes:
            return self.probes[target]
        pid = self.pids.get(target)
        return None if pid is None else lambda: cpu_seconds(pid)

    def floor(self, model: ModelShape, batch: int, steps: int = 1) -> OrtFloor:
        return self.ort[(model.name, batch, steps)]


@dataclass(frozen=True)
class Measured:
    """One figure's load over one or more rounds."""

    rate: float  # replies/s, median over rounds
    item_rate: float  # session-steps/s, median over rounds
    latencies_ns: npt.NDArray[np.int64]  # every round's samples
    starved: int  # streams with no reply in the window, worst round
    cpu_us_per_msg: float | None  # server CPU per reply, all rounds together
    cpu_us_per_item: float | None
    loop_cpu_us_per_msg: float | None  # the part spent on the event loop's thread
    rounds: int
    machine_cores: float | None = None  # cores busy machine-wide, where probed

    @property
    def latency(self) -> dict[str, float]:
        return percentiles_us(self.latencies_ns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_s": self.rate,
            "items_per_s": self.item_rate,
            "latency_us": self.latency,
            "starved": self.starved,
            "cpu_us_per_msg": self.cpu_us_per_msg,
            "cpu_us_per_item": self.cpu_us_per_item,
            "loop_cpu_us_per_msg": self.loop_cpu_us_per_msg,
            "rounds": self.rounds,
            "machine_cores": self.machine_cores,
        }


def summarise(results: list[LoadResult]) -> Measured:
    msgs = sum(r.messages for r in results)
    items = sum(r.items for r in results)
    deltas = [r.probe_delta for r in results]
    cpu_s = loop_s = cores = None
    if all(d is not None for d in deltas):
        cpu_s = sum(d[0] for d in deltas if d is not None)
        loop_s = sum(d[1] for d in deltas if d is not None)
        if all(d is not None and len(d) > 2 for d in deltas):  # the machine's busy seconds
            busy = sum(d[2] for d in deltas if d is not None)
            cores = busy / sum(r.window_s for r in results)
    return Measured(
        rate=float(np.median([r.messages / r.window_s for r in results])),
        item_rate=float(np.median([r.items / r.window_s for r in results])),
        latencies_ns=np.concatenate([r.latencies_ns for r in results]),
        starved=max(int(np.count_nonzero(r.per_stream == 0)) for r in results),
        cpu_us_per_msg=None if cpu_s is None or msgs == 0 else cpu_s * 1e6 / msgs,
        cpu_us_per_item=None if cpu_s is None or items == 0 else cpu_s * 1e6 / items,
        loop_cpu_us_per_msg=None if loop_s is None or msgs == 0 else loop_s * 1e6 / msgs,
        rounds=len(results),
        machine_cores=cores,
    )


def _check(result: LoadResult, what: str) -> LoadResult:
    if result.errors:
        raise RuntimeError(f"{what}: {result.errors} errors, e.g. {result.error_samples}")
    if result.messages == 0:
        raise RuntimeError(f"{what}: no reply completed inside the measured window")
    return result


def stream(
    ctx: Context,
    target: str,
    model: ModelShape,
    streams: int,
    steps: int,
    depth: int = 1,
    protocol: str = "native",
) -> LoadResult:
    """One round: `streams` sessions, each sending `steps` steps a message on its own stream,
    `depth` messages in flight (1: ping-pong); `protocol` "kserve": sequences on the KServe
    front end's ModelStreamInfer instead of StepStream."""
    c = ctx.config
    job = StreamJob(
        target=target,
        model=model.name,
        streams=streams,
        values=steps * c.input_size,
        steps=steps,
        outputs=steps * c.input_size,  # the models are autoregressive: output size == input size
        warmup_s=c.warmup_s,
        window_s=c.latency_window_s if streams == 1 else c.window_s,
        max_messages=c.max_messages,
        depth=depth,
        tls_ca=ctx.tls.get(target, ""),
        protocol=protocol,
    )
    result = ctx.pool.run(job, probe=ctx.cpu_probe(target))
    return _check(result, f"{streams} stream(s) of {model.name} at {target}")


def batch(ctx: Context, target: str, model: ModelShape, size: int, inflight: int) -> LoadResult:
    """One round: `inflight` loops of BatchStep, each for its own `size` sessions."""
    c = ctx.config
    job = BatchJob(
        target=target,
        model=model.name,
        batch=size,
        inflight=inflight,
        input_size=c.input_size,
        output_size=c.input_size,
        warmup_s=c.warmup_s,
        window_s=c.window_s,
        max_messages=c.max_messages,
    )
    result = ctx.pool.run(job, probe=ctx.cpu_probe(target))
    return _check(result, f"BatchStep {size} x {inflight} of {model.name} at {target}")


def interleaved(
    ctx: Context, one: Callable[[str], LoadResult], targets: list[str], rounds: int | None = None
) -> list[Measured]:
    """One Measured per target; each round runs every target, in an order that
    rotates from round to round, so that noise weighs on all alike."""
    results: list[list[LoadResult]] = [[] for _ in targets]
    k = len(targets)
    for i in range(ctx.config.rounds if rounds is None else rounds):
        order = list(range(k))[i % k :] + list(range(k))[: i % k]
        if i % 2:
            order.reverse()
        for j in order:
            results[j].append(one(targets[j]))
    return [summarise(r) for r in results]
