"""Scenario 10: the KServe front end against the native StepStream, on one server.

One sequence and 100 sequences, each on its own ModelStreamInfer stream with
tritonclient's request form (raw FP32 input, sequence_id, START first), against
the same number of native StepStreams on the same server, alternating round by
round. Ratios are KServe / native: the front end's conversion cost, since both
use the same step pipeline and batcher.
"""

from __future__ import annotations

import functools

from seqserve.bench.drivers import LoadResult
from seqserve.bench.measure import Context, interleaved, stream
from seqserve.bench.report import Row, Target

THROUGHPUT = Target(">=", 0.9)
LATENCY = Target("<=", 1.1)


PROTOCOLS = ["native", "kserve"]


def _load(ctx: Context, streams: int, protocol: str) -> LoadResult:
    return stream(ctx, ctx.server, ctx.config.main_model, streams, 1, protocol=protocol)


def protocols(ctx: Context) -> None:
    c = ctx.config
    n, r = c.store_streams, c.store_rounds
    details = {}
    for streams in (1, n):
        ctx.say(f"s10: {streams} stream(s), native and KServe, {r} round(s) each")
        native, kserve = interleaved(ctx, functools.partial(_load, ctx, streams), PROTOCOLS, r)
        scen = f"10 kserve {streams}"
        ctx.rows += [
            Row(scen, "steps/s", kserve.rate, "/s", native.rate, "native StepStream", THROUGHPUT),
            Row(scen, "p50 round trip", kserve.latency["p50"], "us", native.latency["p50"],
                "native StepStream", LATENCY),
        ]  # fmt: skip
        if kserve.cpu_us_per_msg is not None and native.cpu_us_per_msg is not None:
            ctx.rows.append(Row(scen, "server CPU per step", kserve.cpu_us_per_msg, "us",
                                native.cpu_us_per_msg, "native StepStream", None))  # fmt: skip
        ctx.say(
            f"s10 {streams}: KServe {kserve.rate:,.0f}/s p50 {kserve.latency['p50']:.0f} us, "
            f"native {native.rate:,.0f}/s p50 {native.latency['p50']:.0f} us"
        )
        details[str(streams)] = {"native": native.to_dict(), "kserve": kserve.to_dict()}
    ctx.details["10"] = details
