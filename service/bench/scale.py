"""Scenario 5: many idle sessions in one server: memory per session, creation rate, latency.

Opening the issue's 1,000,000 sessions through unary CreateSession takes
minutes at the rates a 2-core machine reaches, so the run opens as many as its
count and time budget allow, measures the server's resident memory growth per
session (/proc/<pid>/status VmRSS), and extrapolates that figure to the full
count. `--idle-sessions 1000000` opens them all when there is time.
"""

from __future__ import annotations

import time

from seqserve.bench.drivers import CreateJob
from seqserve.bench.measure import Context, stream, summarise
from seqserve.bench.procs import rss_bytes
from seqserve.bench.report import Row, Target

# "No slowdown" with the sessions open, allowing for run-to-run noise on a shared machine.
SLOWDOWN_TARGET = Target("<=", 1.2)


def scale(ctx: Context) -> None:
    c = ctx.config
    model = c.scale_model
    raw = ctx.specs[model.name].state_bytes_per_session()  # float32 state of one session
    allowed = 1.5 * raw + 250
    if ctx.start_scale_server is None:
        ctx.say("s5 skipped: it reads the server's memory, so it needs a server it starts")
        return
    with ctx.start_scale_server(c.idle_sessions + 1000) as proc:
        target = proc.address
        before = summarise([stream(ctx, target, model, 1, 1)])
        rss0 = rss_bytes(proc.pid)
        curve: list[tuple[int, int]] = [(0, rss0)]

        last_said = [time.monotonic()]

        def sample() -> None:
            n, rss = sum(int(v.value) for v in ctx.pool.progress), rss_bytes(proc.pid)
            curve.append((n, rss))
            if time.monotonic() - last_said[0] >= 5.0:
                last_said[0] = time.monotonic()
                ctx.say(f"s5 ... {n:,} sessions open, server RSS {rss / 2**20:,.0f} MiB")

        ctx.say(f"s5 opening up to {c.idle_sessions:,} idle sessions of {model.name} ...")
        job = CreateJob(target, model.name, c.idle_sessions, c.creators, c.create_budget_s)
        created = ctx.pool.run(job, on_wait=sample)
        if created.errors:
            raise RuntimeError(f"creating sessions: {created.error_samples}")
        rss1 = rss_bytes(proc.pid)
        curve.append((created.created, rss1))
        after = summarise([stream(ctx, target, model, 1, 1)])
    n = created.created
    per_session = (rss1 - rss0) / n
    rate = n / created.elapsed_s
    b, a = before.latency, after.latency
    ctx.say(
        f"s5 {n:,} sessions at {rate:,.0f}/s: {per_session:,.0f} B/session "
        f"(raw state {raw} B); p50 {b['p50']:.0f} -> {a['p50']:.0f} us"
    )
    ctx.samples["5 scale"] = {
        "seqserve, no idle sessions": before.latencies_ns,
        f"seqserve, {n:,} idle sessions": after.latencies_ns,
    }
    ctx.details["5"] = {
        "model": model.name,
        "sessions": n,
        "create_s": created.elapsed_s,
        "create_per_s": rate,
        "rss_before": rss0,
        "rss_after": rss1,
        "bytes_per_session": per_session,
        "raw_state_bytes": raw,
        "allowed_bytes": allowed,
        "curve": curve,
        "extrapolated_to": c.idle_target,
        "extrapolated_growth_bytes": per_session * c.idle_target,
        "latency_before": before.to_dict(),
        "latency_after": after.to_dict(),
    }
    scen = f"5 scale {n:,} idle"
    extrapolated = " (extrapolated)" if n < c.idle_target else ""
    mib = 2**20
    ctx.rows += [
        Row(scen, "sessions created/s", rate, "/s"),
        Row(scen, "RSS growth per session", per_session, "B", raw, "raw state bytes",
            Target("<=", allowed, on_value=True)),
        Row(scen, f"RSS growth at {c.idle_target:,}{extrapolated}",
            per_session * c.idle_target / mib, "MiB", raw * c.idle_target / mib, "raw state"),
        Row(scen, "p50 round trip, sessions open", a["p50"], "us", b["p50"], "p50 none open",
            SLOWDOWN_TARGET),
        Row(scen, "p99 round trip, sessions open", a["p99"], "us", b["p99"], "p99 none open"),
    ]  # fmt: skip
