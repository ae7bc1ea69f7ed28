"""Where a BatchStep's time goes, in process: each stage of the core timed on its own.

    python -m seqserve.bench.stages --repository bench-out/repository --batch 256

Runs the server's own objects (session manager, batcher, slab, the gRPC
front end's encode) on one model, without a transport, sending the same
one-step-per-session request again and again, and reports the seconds per
request spent in each stage. A stage is timed by wrapping its function for
the run (and unwrapping it after); indented stages run inside the one above
them, the others one after another. A round predicted to be short runs on
the loop and skips the hand-over (seqserve.core.rounds.INLINE_S). The
transport's own cost is what the echo server costs per message in
`seqserve bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

# (module, class or "", function, label): the stages of one BatchStep, in call order.
STAGES = [
    ("seqserve.store.memory", "MemoryDirectory", "lookup_many", "session lookup"),
    ("seqserve.core.batchplan", "BatchPlan", "__init__", "plan: counts, duplicates, times"),
    ("seqserve.core.batchplan", "BatchPlan", "resolve", "plan: value counts, item errors"),
    ("seqserve.core.batchplan", "BatchPlan", "groups", "plan: one group per version"),
    ("seqserve.core.batcher", "Batcher", "submit", "queue and per-session order"),
    ("seqserve.core.rounds", "RoundRunner", "prepare", "round: buckets by T, gather"),
    ("seqserve.core.slab", "Slab", "gather", "  gather states"),
    ("seqserve.core.batcher", "Batcher", "_hand_over", "hand-over to the worker thread"),
    ("seqserve.core.rounds", "RoundRunner", "compute", "model calls (worker, or loop if small)"),
    ("seqserve.core.runtime", "LoadedModel", "run", "  ONNX Runtime"),
    ("seqserve.core.rounds", "RoundRunner", "finish", "commit and answer"),
    ("seqserve.core.slab", "Slab", "commit", "  commit"),
    ("seqserve.core.slab", "Slab", "scatter", "    scatter states"),
    ("seqserve.core.answers", "Answers", "record", "    answers kept for retries"),
    ("seqserve.core.batchplan", "BatchPlan", "result", "merge back to request order"),
    ("seqserve.grpc.batches", "", "encode", "encode the answer"),
]


@contextlib.contextmanager
def timed_stages() -> Iterator[dict[str, float]]:
    """Wrap every stage's function to add its seconds to the yielded dict."""
    import importlib

    spent: dict[str, float] = collections.defaultdict(float)
    undo: list[Callable[[], None]] = []
    for module, cls, name, label in STAGES:
        owner: Any = importlib.import_module(module)
        if cls:
            owner = getattr(owner, cls)
        original = getattr(owner, name)

        def timed(*a: Any, _f: Any = original, _label: str = label, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                spent[_label] += time.perf_counter() - t0

        setattr(owner, name, functools.wraps(original)(timed))
        undo.append(functools.partial(setattr, owner, name, original))
    try:
        yield spent
    finally:
        for restore in undo:
            restore()


async def measure(repository: Path, model: str, batch: int, requests: int) -> dict[str, float]:
    """Seconds per request of each stage, and in all ("request", "loop thread CPU")."""
    from seqserve.api import seqserve_pb2 as pb
    from seqserve.core.heap import keep_round_buffers_in_heap
    from seqserve.core.runtime import ModelRegistry
    from seqserve.core.sessions import SessionManager
    from seqserve.core.settings import CoreSettings
    from seqserve.grpc import batches
    from seqserve.store.memory import MemoryDirectory

    keep_round_buffers_in_heap()  # as the server does
    registry = ModelRegistry.load(repository)
    input_size = registry.get(model).spec.input_size
    manager = SessionManager(registry, CoreSettings(max_sessions=batch), MemoryDirectory)
    await manager.start()
    try:
        ids = [manager.create(model, None, None, "").session_id for _ in range(batch)]
        x = np.full(batch * input_size, 0.5, "<f4")  # (B * F,) one step each
        wire = pb.BatchStepRequest(session_ids=ids, values_f32=x.tobytes()).SerializeToString()

        async def one() -> None:
            request = pb.BatchStepRequest.FromString(wire)
            result = await manager.step_batch(
                list(request.session_ids), None, batches.values_of(request), ""
            )
            batches.encode(request.request_id, result, 1 << 30, raw=True).SerializeToString()

        for _ in range(max(3, requests // 10)):  # warm: caches, allocator, first ORT calls
            await one()
        with timed_stages() as spent:
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            for i in range(requests):
                await one()
                if (i + 1) % max(1, requests // 4) == 0:
                    print(f"  {i + 1}/{requests} requests", file=sys.stderr)
            cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
        figures = {k: v / requests for k, v in spent.items()}
        figures["request"] = wall / requests
        figures["loop thread CPU"] = cpu / requests
        return figures
    finally:
        await manager.stop(grace_s=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seqserve.bench.stages", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--repository", type=Path, default=Path("bench-out/repository"))
    parser.add_argument("--model", default="bench-lstm-h128-l2")
    parser.add_argument("--batch", type=int, default=256, help="sessions per request")
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args(argv)
    if args.batch < 1 or args.requests < 1:
        parser.error("--batch and --requests must be >= 1")
    if not (args.repository / args.model).is_dir():
        parser.error(f"no model {args.model!r} in {args.repository} (seqserve bench exports it)")
    figures = asyncio.run(measure(args.repository, args.model, args.batch, args.requests))
    b = args.batch
    print(f"{'stage':40s} {'us/request':>11s} {'us/session-step':>16s}")
    for label in [s[3] for s in STAGES] + ["request", "loop thread CPU"]:
        if label in figures:
            us = figures[label] * 1e6
            print(f"{label:40s} {us:11.1f} {us / b:16.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
