"""Scenario 7: the durable stores against the memory store, in the same run.

A server on `--store sqlite:` (a file in the output folder) and one on
`--store redis://` (a redis-server started here, append-only file on,
fsync every second) are measured beside the main server (memory) on three
figures: one stream's p50 latency, 100 streams' steps/s and the batch path
at its largest B with the most messages in flight. Each figure rotates
over the three servers round by round, and every ratio is store / memory.
A machine without redis-server measures SQLite only and says so.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from seqserve.bench.drivers import LoadResult
from seqserve.bench.measure import Context, Measured, batch, interleaved, stream
from seqserve.bench.procs import ServerProcess
from seqserve.bench.report import Row, Target

# What the durable-sessions issue holds each store to, as a ratio to memory.
TARGETS: dict[str, dict[str, Target]] = {
    "sqlite": {
        "latency": Target("<=", 1.15),
        "streams": Target(">=", 0.9),
        "bulk": Target(">=", 0.7),
    },
    "redis": {"streams": Target(">=", 0.8), "bulk": Target(">=", 0.5)},
}


@contextmanager
def redis_server() -> Iterator[str | None]:
    """A throwaway redis-server on a free loopback port (None when it is not installed)."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="seqserve-bench-redis-") as folder:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", folder,
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while not _listening(port):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not listen on {port}")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def stores(ctx: Context, start: Callable[[list[str]], ServerProcess], out: Path) -> None:
    """Scenario 7 (needs servers of its own: not with --target)."""
    c = ctx.config
    model = c.main_model
    b, k = max(c.batch_sizes), max(c.inflight)
    n = c.store_streams
    with ExitStack() as stack:
        db = out / "bench-store.db"
        for leftover in out.glob("bench-store.db*"):
            leftover.unlink()
        targets = {"memory": ctx.server}
        sqlite = stack.enter_context(start(["--store", f"sqlite:{db}"]))
        targets["sqlite"] = sqlite.start()
        ctx.pids[targets["sqlite"]] = sqlite.pid
        url = stack.enter_context(redis_server())
        if url is None:
            ctx.say("s7: redis-server is not installed: the Redis store is not measured")
        else:
            redis = stack.enter_context(start(["--store", url]))
            targets["redis"] = redis.start()
            ctx.pids[targets["redis"]] = redis.pid
        names, addresses = list(targets), list(targets.values())
        r = c.store_rounds
        loads: dict[str, tuple[str, Callable[[str], LoadResult]]] = {
            "latency": ("1 stream", lambda t: stream(ctx, t, model, 1, 1)),
            "streams": (f"{n} streams", lambda t: stream(ctx, t, model, n, 1)),
            "bulk": (f"B={b} x{k}", lambda t: batch(ctx, t, model, b, k)),
        }
        figures: dict[str, list[Measured]] = {}
        for what, (label, load) in loads.items():
            ctx.say(f"s7: {label} on {', '.join(names)}, {r} round(s) each")
            figures[what] = interleaved(ctx, load, addresses, r)
    details: dict[str, Any] = {"streams": n, "batch": b, "inflight": k, "rounds": r}
    memory = {what: ms[0] for what, ms in figures.items()}
    for i, name in enumerate(names):
        got = {what: ms[i] for what, ms in figures.items()}
        details[name] = {what: m.to_dict() for what, m in got.items()}
        if name == "memory":
            continue
        held = TARGETS[name]
        p50, mem_p50 = got["latency"].latency["p50"], memory["latency"].latency["p50"]
        ctx.say(
            f"s7 {name}: p50 {p50:.0f} us (memory {mem_p50:.0f}), {n} streams "
            f"{got['streams'].rate:,.0f}/s (memory {memory['streams'].rate:,.0f}), "
            f"B={b} x{k} {got['bulk'].item_rate:,.0f}/s (memory {memory['bulk'].item_rate:,.0f})"
        )
        scen = f"7 store {name}"
        ctx.rows += [
            Row(scen, "p50 round trip, 1 stream", p50, "us", mem_p50, "memory store",
                held.get("latency")),
            Row(scen, f"steps/s, {n} streams", got["streams"].rate, "/s",
                memory["streams"].rate, "memory store", held.get("streams")),
            Row(scen, f"B={b} x{k} session-steps/s", got["bulk"].item_rate, "/s",
                memory["bulk"].item_rate, "memory store", held.get("bulk")),
        ]  # fmt: skip
    ctx.details["7"] = details
