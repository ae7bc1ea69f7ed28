"""Scenarios 1, 2, 3, 4 and 6: each drives the server (and its floor) and adds table rows.

Scenario 5 (memory with many idle sessions) needs a server of its own: scale.py.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import numpy.typing as npt

from seqserve.bench.config import BenchConfig, ModelShape
from seqserve.bench.drivers import LoadResult
from seqserve.bench.measure import (
    Context,
    Measured,
    batch,
    interleaved,
    stream,
    summarise,
)
from seqserve.bench.report import Row, Target

LATENCY_TARGET = Target("<=", 1.3)
REFERENCE_TARGET = Target("<=", 1.1)  # the 1-stream p50 against a model run inline on the loop
ECHO_TARGET = Target(">=", 0.8)
STREAM_CPU_TARGET = Target("<=", 1.3)  # CPU per step against the echo's per message
BULK_TARGET = Target(">=", 0.5)
# The bulk path's corner cells. One batch in flight pays the round trip and the model
# call in series (near 0.53x of ORT at best); several in flight overlap them.
SERIAL_BULK = (Target(">=", 0.45), Target("<=", 1.5))  # (rate against ORT, CPU against ORT)
PIPELINED_BULK = (Target(">=", 0.9), Target("<=", 1.3))
CHUNK_TARGET = Target(">=", 0.7)
NO_STARVED = Target("<=", 0, on_value=True)


def _cpu_row(
    scen: str,
    what: str,
    cpu: float | None,
    floor: float | None,
    floor_what: str,
    target: Target | None = None,
) -> list[Row]:
    """A CPU figure; /proc counts in clock ticks (10 ms), so a short window may read 0."""
    if cpu is None:
        return []
    held = target if floor else None
    return [Row(scen, what, cpu, "us", floor or None, floor_what if floor else "", held)]


def _bulk_targets(c: BenchConfig, b: int, k: int) -> tuple[Target, Target | None]:
    """The targets of one bulk cell: (session-steps/s against ORT, CPU per one against ORT)."""
    if (b, k) == (min(c.batch_sizes), min(c.inflight)):
        return SERIAL_BULK
    if (b, k) == (max(c.batch_sizes), max(c.inflight)):
        return PIPELINED_BULK
    return BULK_TARGET, None


def _streams(ctx: Context, model: ModelShape, n: int, target: str) -> LoadResult:
    return stream(ctx, target, model, n, 1)


def latency(ctx: Context) -> Measured:
    """Scenario 1: one session, ping-pong single steps over the stream. Returns the echo floor."""
    model = ctx.config.main_model
    targets = [ctx.server, ctx.echo] + ([ctx.reference] if ctx.reference else [])
    server, echo, *reference = interleaved(ctx, lambda t: stream(ctx, t, model, 1, 1), targets)
    ctx.measured["1"] = server
    s, e = server.latency, echo.latency
    ort_us = ctx.floor(model, 1).median_s * 1e6
    ctx.say(f"s1 latency: p50 {s['p50']:.0f} us (echo {e['p50']:.0f} + ORT {ort_us:.1f})")
    ctx.samples["1 latency"] = {"seqserve": server.latencies_ns, "echo": echo.latencies_ns}
    ctx.details["1"] = {
        "model": model.name,
        "server": server.to_dict(),
        "echo": echo.to_dict(),
        "ort_b1_us": ort_us,
    }
    scen = "1 latency"
    ctx.rows += [
        Row(scen, "p50 round trip", s["p50"], "us", e["p50"] + ort_us, "echo p50 + ORT B=1",
            LATENCY_TARGET),
        Row(scen, "p99 round trip", s["p99"], "us", e["p99"] + ort_us, "echo p99 + ORT B=1"),
        *_cpu_row(scen, "server CPU per step", server.cpu_us_per_msg, echo.cpu_us_per_msg,
                  "echo CPU per msg"),
        *_cpu_row(scen, "server CPU on the loop thread", server.loop_cpu_us_per_msg,
                  echo.loop_cpu_us_per_msg, "echo loop thread"),
    ]  # fmt: skip
    if reference:
        r = reference[0].latency
        ctx.say(f"s1 inline reference (no batching, no core): p50 {r['p50']:.0f} us")
        ctx.details["1"]["reference"] = reference[0].to_dict()
        ctx.samples["1 latency"]["inline reference"] = reference[0].latencies_ns
        ctx.rows += [
            Row(scen, "p50 inline reference", r["p50"], "us", e["p50"] + ort_us,
                "echo p50 + ORT B=1"),
            Row(scen, "p50 against the reference", s["p50"], "us", r["p50"],
                "inline reference p50", REFERENCE_TARGET),
        ]  # fmt: skip
    return echo


def concurrency(ctx: Context) -> None:
    """Scenario 2: N sessions, each on its own stream, ping-pong."""
    c = ctx.config
    model = c.main_model
    series: list[dict[str, Any]] = []
    samples: dict[str, npt.NDArray[np.int64]] = {}
    for n in c.concurrency:
        targets = [ctx.server, ctx.echo] + ([ctx.reference] if ctx.reference else [])
        one = functools.partial(_streams, ctx, model, n)
        server, echo, *reference = interleaved(ctx, one, targets)
        s, e = server.latency, echo.latency
        ctx.say(
            f"s2 {n} streams: {server.rate:,.0f} steps/s (echo {echo.rate:,.0f}), "
            f"p50 {s['p50']:,.0f} us, starved {server.starved}"
        )
        series.append({"streams": n, "server": server.to_dict(), "echo": echo.to_dict()})
        samples[f"seqserve, {n} streams"] = server.latencies_ns
        scen = f"2 concurrency {n}"
        held = ECHO_TARGET if n in c.starvation_targets else None
        cpu_held = STREAM_CPU_TARGET if n == min(c.starvation_targets) else None
        ctx.rows += [
            Row(scen, "steps/s", server.rate, "/s", echo.rate, "echo msgs/s", held),
            Row(scen, "p50 round trip", s["p50"], "us", e["p50"], "echo p50"),
            Row(scen, "p99 round trip", s["p99"], "us", e["p99"], "echo p99"),
            Row(scen, "sessions starved", server.starved, "", None, "", NO_STARVED),
            *_cpu_row(scen, "server CPU per step", server.cpu_us_per_msg, echo.cpu_us_per_msg,
                      "echo CPU per msg", cpu_held),
        ]  # fmt: skip
        if reference:
            series[-1]["reference"] = reference[0].to_dict()
            ctx.rows.append(
                Row(scen, "steps/s inline reference", reference[0].rate, "/s", echo.rate,
                    "echo msgs/s")
            )  # fmt: skip
    ctx.samples["2 concurrency"] = samples
    ctx.details["2"] = {"model": model.name, "series": series}


def bulk(ctx: Context) -> None:
    """Scenario 3: BatchStep messages of B sessions, 1..k in flight, against ORT rows/s."""
    c = ctx.config
    model = c.main_model
    series: list[dict[str, Any]] = []
    samples: dict[str, npt.NDArray[np.int64]] = {}
    for b in c.batch_sizes:
        floor = ctx.floor(model, b)
        ort_us = floor.median_s * 1e6 / b  # ORT per row at this B
        for k in c.inflight:
            m = ctx.measured[f"3 B={b} x{k}"] = summarise([batch(ctx, ctx.server, model, b, k)])
            # The transport's own CPU for the same messages: with ORT's, the least any
            # server on this transport and runtime spends per session-step.
            echo = summarise([batch(ctx, ctx.echo, model, b, k)])
            ctx.say(
                f"s3 B={b} x{k}: {m.item_rate:,.0f} session-steps/s (ORT {floor.rows_per_s:,.0f},"
                f" echo {echo.item_rate:,.0f})"
            )
            series.append({"batch": b, "inflight": k, "server": m.to_dict(),
                           "echo": echo.to_dict(), "ort_rows_per_s": floor.rows_per_s})  # fmt: skip
            samples[f"B={b}, {k} in flight"] = m.latencies_ns
            scen = f"3 bulk B={b} x{k}"
            rate_held, cpu_held = _bulk_targets(c, b, k)
            both = None if echo.cpu_us_per_item is None else echo.cpu_us_per_item + ort_us
            ctx.rows += [
                Row(scen, "session-steps/s", m.item_rate, "/s", floor.rows_per_s,
                    f"ORT rows/s B={b}", rate_held),
                Row(scen, "p50 request", m.latency["p50"], "us", floor.median_s * 1e6,
                    f"ORT run B={b}"),
                *_cpu_row(scen, "server CPU per session-step", m.cpu_us_per_item,
                          ort_us, "ORT per row", cpu_held),
                *_cpu_row(scen, "echo CPU per session-step", echo.cpu_us_per_item,
                          ort_us, "ORT per row"),
                *_cpu_row(scen, "server CPU over echo + ORT", m.cpu_us_per_item,
                          both, "echo CPU + ORT per row"),
            ]  # fmt: skip
            if k == max(c.inflight):
                ctx.rows.append(
                    Row(scen, "echo session-steps/s", echo.item_rate, "/s", floor.rows_per_s,
                        f"ORT rows/s B={b}")
                )  # fmt: skip
    ctx.samples["3 bulk"] = samples
    ctx.details["3"] = {"model": model.name, "series": series}


def chunks(ctx: Context) -> None:
    """Scenario 4: one session sending `chunk` steps per message.

    Pipelined (the next chunk sent while the last is answered, as a client streaming a
    recorded series does) is held to the target: it measures the server's throughput.
    Ping-pong adds a full transport round trip per chunk that no server can hide, so it
    is shown against ORT + the echo round trip of the same message.
    """
    c = ctx.config
    model = c.main_model
    piped = summarise([stream(ctx, ctx.server, model, 1, c.chunk, depth=c.chunk_depth)])
    pong = summarise([stream(ctx, ctx.server, model, 1, c.chunk)])
    echo = summarise([stream(ctx, ctx.echo, model, 1, c.chunk)])
    floor = ctx.floor(model, 1, c.chunk)
    ort_us, echo_us = floor.median_s * 1e6, echo.latency["p50"]
    floor_rate = c.chunk / floor.median_s
    pong_floor = c.chunk / (floor.median_s + echo_us / 1e6)
    ctx.say(
        f"s4 chunks of {c.chunk}: {piped.item_rate:,.0f} steps/s pipelined, "
        f"{pong.item_rate:,.0f} ping-pong (ORT {floor_rate:,.0f})"
    )
    ctx.samples["4 chunks"] = {
        f"seqserve, {c.chunk} steps a message, ping-pong": pong.latencies_ns,
        f"seqserve, {c.chunk} steps a message, {c.chunk_depth} in flight": piped.latencies_ns,
        f"echo, {c.chunk} values a message": echo.latencies_ns,
    }
    ctx.details["4"] = {"model": model.name, "chunk": c.chunk, "depth": c.chunk_depth,
                        "pipelined": piped.to_dict(), "ping_pong": pong.to_dict(),
                        "echo": echo.to_dict(), "ort_run_us": ort_us}  # fmt: skip
    scen = f"4 chunks T={c.chunk}"
    ctx.rows += [
        Row(scen, f"steps/s, {c.chunk_depth} in flight", piped.item_rate, "/s", floor_rate,
            f"ORT B=1 T={c.chunk}", CHUNK_TARGET),
        Row(scen, "steps/s, ping-pong", pong.item_rate, "/s", pong_floor,
            "ORT + echo round trip"),
        Row(scen, "p50 round trip, ping-pong", pong.latency["p50"], "us", ort_us + echo_us,
            "ORT + echo p50"),
    ]  # fmt: skip


def _cell_figures(ctx: Context, model: ModelShape, b: int, k: int) -> tuple[Measured, Measured]:
    """(latency, bulk) of one cell; the main model's come from scenarios 1 and 3 when they ran."""
    main = model == ctx.config.main_model
    lat = ctx.measured.get("1") if main else None
    bulk_m = ctx.measured.get(f"3 B={b} x{k}") if main else None
    if lat is None:
        lat = summarise([stream(ctx, ctx.server, model, 1, 1)])
    if bulk_m is None:
        bulk_m = summarise([batch(ctx, ctx.server, model, b, k)])
    return lat, bulk_m


def cells(ctx: Context, echo: Measured | None) -> None:
    """Scenario 6: scenarios 1 and 3 for each cell at the same size."""
    c = ctx.config
    if echo is None:  # scenario 1 did not run: measure its echo floor here
        echo = summarise([stream(ctx, ctx.echo, c.main_model, 1, 1)])
    echo_p50 = echo.latency["p50"]
    b, k = max(c.batch_sizes), max(c.inflight)
    out = []
    for model in c.cell_models():
        ort1, ortb = ctx.floor(model, 1), ctx.floor(model, b)
        lat, bulk_m = _cell_figures(ctx, model, b, k)
        p50 = lat.latency["p50"]
        ctx.say(
            f"s6 {model.cell}: p50 {p50:.0f} us (ORT B=1 {ort1.median_s * 1e6:.1f} us), "
            f"B={b} {bulk_m.item_rate:,.0f}/s (ORT {ortb.rows_per_s:,.0f})"
        )
        out.append({"model": model.name, "cell": model.cell, "p50_us": p50,
                    "bulk_per_s": bulk_m.item_rate, "ort_b1_us": ort1.median_s * 1e6,
                    "ort_rows_per_s": ortb.rows_per_s})  # fmt: skip
        scen = f"6 cells {model.cell}"
        ctx.rows += [
            Row(scen, "p50 round trip", p50, "us", echo_p50 + ort1.median_s * 1e6,
                "echo p50 + ORT B=1", LATENCY_TARGET),
            Row(scen, f"B={b} x{k} session-steps/s", bulk_m.item_rate, "/s", ortb.rows_per_s,
                f"ORT rows/s B={b}", BULK_TARGET),
        ]  # fmt: skip
    ctx.details["6"] = {"batch": b, "inflight": k, "cells": out}
