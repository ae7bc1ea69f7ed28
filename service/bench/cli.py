"""`seqserve bench` / `python -m seqserve.bench`: the command line of the benchmark."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from seqserve.bench.config import FULL, SMOKE

MAX_CREATE_BUDGET_S = 900.0

DESCRIPTION = """\
Benchmark seqserve against floors measured in the same run: an echo server on
the same gRPC transport (no model) and ONNX Runtime in-process on the same
model, batch sizes and session options. Scenarios: 1 latency, 2 concurrency,
3 gateway batch path, 4 chunks, 5 memory with many idle sessions, 6 cells,
7 the durable stores (SQLite, and Redis when redis-server is installed)
against the memory store, 8 two replicas sharing sessions on Redis through
Envoy against one replica and a direct connection, 9 the cost of metrics and
of TLS against the plain server, 10 the KServe v2 front end against the native
StepStream.
Client load runs in separate processes; everything stays on loopback.

The models are untrained LSTM/GRU/RNN forecasters with seeded random weights
(speed does not depend on the weights), exported with seqserve.models.export, so the
benchmark needs the train extra (torch): pip install 'seqserve[train]'.
A full run takes about seven minutes on 2 cores; --smoke runs tiny in seconds.
"""


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__} > 0, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seqserve bench",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--smoke", action="store_true", help="tiny models and windows (CI) [off]")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("bench-out"),
        help="folder for bench.json, tables and PNGs [bench-out]",
    )
    p.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="where the benchmark models are exported (reused when present) [OUT/repository]",
    )
    p.add_argument(
        "--target",
        metavar="HOST:PORT",
        default=None,
        help="benchmark a running server that serves --repository instead of starting one "
        "(scenario 5, which reads the server's memory, is skipped) [start one]",
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra flag for the started `seqserve serve`, e.g. --server-arg=--batch-delay-us=50 "
        "[none]",
    )
    p.add_argument(
        "--only", default=None, metavar="LIST", help="scenarios to run, e.g. 1,2 [all: 1-10]"
    )
    p.add_argument(
        "--window", type=_positive(float), default=None, help="seconds per measured window [2]"
    )
    p.add_argument(
        "--idle-sessions",
        type=_positive(int),
        default=None,
        help=f"scenario 5: sessions to open at most, within about 30 s unless more are asked "
        f"for [{FULL.idle_sessions:,}; the figure is extrapolated to {FULL.idle_target:,}]",
    )
    p.add_argument("--client-procs", type=_positive(int), default=None, help="client processes [2]")
    p.add_argument(
        "--strict", action="store_true", help="exit 1 when a target is missed (default: report)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = SMOKE if args.smoke else FULL
    if args.window is not None:
        config = replace(config, window_s=args.window, latency_window_s=args.window)
    if args.idle_sessions is not None:
        # Time to open them at a slow 2,000 a second (the budget is a bound, not a wait).
        budget = min(MAX_CREATE_BUDGET_S, max(config.create_budget_s, args.idle_sessions / 2000))
        config = replace(config, idle_sessions=args.idle_sessions, create_budget_s=budget)
    if args.client_procs is not None:
        config = replace(config, client_procs=args.client_procs)

    from seqserve.bench.run import ALL_SCENARIOS, RunOptions, run

    only = tuple(s.strip() for s in args.only.split(",")) if args.only else ALL_SCENARIOS
    unknown = sorted(set(only) - set(ALL_SCENARIOS))
    if unknown:
        build_parser().error(f"--only: expected scenarios among 1-10, got {', '.join(unknown)}")
    opts = RunOptions(
        config=config,
        out=args.out,
        repository=args.repository or args.out / "repository",
        target=args.target,
        server_args=tuple(args.server_arg),
        only=only,
    )
    _, failed = run(opts)
    return 1 if args.strict and failed else 0
