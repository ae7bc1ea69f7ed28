"""One benchmark run: build the models, measure the floors, start the servers, run the scenarios."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from seqserve.bench import plots, scenarios
from seqserve.bench.config import BenchConfig, ModelShape
from seqserve.bench.floors import OrtFloor, OrtTimer
from seqserve.bench.measure import Context
from seqserve.bench.modelrepo import VERSION, build_repository
from seqserve.bench.operations import operations
from seqserve.bench.pool import ClientPool
from seqserve.bench.procs import ServerProcess, echo_server, reference_server, seqserve_server
from seqserve.bench.protocols import protocols
from seqserve.bench.replicas import replicas
from seqserve.bench.report import Row, format_markdown, format_table, write_json
from seqserve.bench.scale import scale
from seqserve.bench.stores import stores
from seqserve.core.spec import ModelSpec

ALL_SCENARIOS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "10")
MAIN_SERVER_SESSIONS = 100_000


@dataclass(frozen=True)
class RunOptions:
    config: BenchConfig
    out: Path
    repository: Path
    target: str | None  # a running server that serves `repository`; None: start one
    server_args: tuple[str, ...]
    only: tuple[str, ...]


class Progress:
    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self._t0:6.1f} s] {message}", file=sys.stderr, flush=True)


def _floors(
    opts: RunOptions, specs: dict[str, ModelSpec], say: Callable[[str], None]
) -> dict[tuple[str, int, int], OrtFloor]:
    c = opts.config
    wanted: list[tuple[ModelShape, int, int]] = [(c.main_model, 1, 1), (c.main_model, 1, c.chunk)]
    wanted += [(c.main_model, b, 1) for b in c.batch_sizes]
    for m in c.cell_models():
        wanted += [(m, 1, 1), (m, max(c.batch_sizes), 1)]
    floors: dict[tuple[str, int, int], OrtFloor] = {}
    timers: dict[str, OrtTimer] = {}
    for shape, batch, steps in dict.fromkeys(wanted):
        timer = timers.get(shape.name)
        if timer is None:
            version_dir = opts.repository / shape.name / VERSION
            timer = timers[shape.name] = OrtTimer(shape.name, version_dir, specs[shape.name])
        f = timer.measure(batch, steps, c.floor_budget_s)
        floors[(shape.name, batch, steps)] = f
        say(
            f"floor: ORT {shape.name} B={batch} T={steps}: {f.median_s * 1e6:,.1f} us/run, "
            f"{f.rows_per_s:,.0f} rows/s"
        )
    return floors


def run(opts: RunOptions) -> tuple[list[Row], int]:
    """Run the benchmark; write JSON, table and plots to `opts.out`; return rows and failures."""
    say = Progress()
    c = opts.config
    started = datetime.now(UTC)
    load_start = os.getloadavg()
    if load_start[0] > (os.cpu_count() or 1):
        say(f"the machine is busy (load average {load_start[0]:.1f}): figures will be noisy")
    opts.out.mkdir(parents=True, exist_ok=True)
    specs = build_repository(opts.repository, c.all_models(), c.input_size, say)
    floors = _floors(opts, specs, say)

    def scale_server(max_sessions: int) -> ServerProcess:
        proc = seqserve_server(opts.repository, max_sessions, list(opts.server_args))
        proc.start()
        return proc

    def store_server(args: list[str]) -> ServerProcess:
        return seqserve_server(opts.repository, MAIN_SERVER_SESSIONS, [*opts.server_args, *args])

    with ExitStack() as stack:
        echo = stack.enter_context(echo_server(c.input_size, c.input_size))
        echo.start()
        if opts.target is None:
            server = stack.enter_context(
                seqserve_server(opts.repository, MAIN_SERVER_SESSIONS, list(opts.server_args))
            )
            target = server.start()
        else:
            target = opts.target
        reference = None
        if "1" in opts.only or "2" in opts.only:
            reference = stack.enter_context(reference_server(opts.repository, c.main_model.name))
            reference.start()
        say(f"echo floor at {echo.address}, seqserve at {target}")
        pool = stack.enter_context(ClientPool(c.client_procs))
        ctx = Context(
            config=c,
            pool=pool,
            server=target,
            echo=echo.address,
            reference=None if reference is None else reference.address,
            specs=specs,
            ort=floors,
            say=say,
            start_scale_server=scale_server if opts.target is None else None,
            pids={echo.address: echo.pid},
        )
        if opts.target is None:
            ctx.pids[target] = server.pid
        try:
            _scenarios(ctx, opts.only)
            if "7" in opts.only and opts.target is None:  # servers of its own
                stores(ctx, store_server, opts.out)
            if "8" in opts.only and opts.target is None:
                replicas(ctx, store_server)
            if "9" in opts.only and opts.target is None:
                operations(ctx, store_server, opts.out)
        except Exception:
            if opts.target is None:  # the server's own account of what went wrong
                print(
                    f"seqserve server output (last lines):\n{server.output_tail()}", file=sys.stderr
                )
            raise

    rows = sorted(ctx.rows, key=lambda r: int(r.scenario.split()[0]))  # stable: measured order
    table = format_table(rows)
    print(table)
    (opts.out / "table.txt").write_text(table + "\n")
    (opts.out / "table.md").write_text(format_markdown(rows) + "\n")
    held = [r for r in rows if r.target is not None]  # the figures the targets apply to
    (opts.out / "table-targets.md").write_text(format_markdown(held) + "\n")
    meta = {
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "config": c.to_dict(),
        "target": opts.target,
        "server_args": list(opts.server_args),
        "floors": {"ort": [{**vars(f), "rows_per_s": f.rows_per_s} for f in floors.values()]},
    }
    write_json(opts.out / "bench.json", rows, ctx.details, meta)
    pngs = plots.latency_plots(ctx.samples, _latency_floor(ctx), opts.out)
    if "2" in ctx.details:
        pngs.append(plots.throughput_plot(ctx.details["2"]["series"], opts.out))
    if "3" in ctx.details or "6" in ctx.details:
        bulk = ctx.details.get("3", {}).get("series", [])
        cells = ctx.details.get("6", {}).get("cells", [])
        pngs.append(plots.bulk_plot(bulk, cells, opts.out))
    if "5" in ctx.details:
        d = ctx.details["5"]
        pngs.append(plots.memory_plot(d["curve"], d["raw_state_bytes"], opts.out))
    failed = sum(1 for r in rows if r.passed is False)
    met = sum(1 for r in rows if r.passed)
    say(
        f"{met} targets met, {failed} missed; wrote {opts.out / 'bench.json'} and {len(pngs)} plots"
    )
    return rows, failed


def _scenarios(ctx: Context, only: tuple[str, ...]) -> None:
    echo_latency = scenarios.latency(ctx) if "1" in only else None
    if "2" in only:
        scenarios.concurrency(ctx)
    if "3" in only:
        scenarios.bulk(ctx)
    if "4" in only:
        scenarios.chunks(ctx)
    if "10" in only:
        protocols(ctx)
    if "6" in only:  # before 5: it uses the main server, 5 starts its own
        scenarios.cells(ctx, echo_latency)
    if "5" in only:
        scale(ctx)


def _latency_floor(ctx: Context) -> float | None:
    """Scenario 1's floor: echo p50 + ORT batch-1 time (us)."""
    d = ctx.details.get("1")
    return float(d["echo"]["latency_us"]["p50"] + d["ort_b1_us"]) if d else None
