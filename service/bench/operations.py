"""Scenario 9: what metrics and TLS cost, against the plain server in the same run.

Three servers are started alike: a plain one (plaintext, no metrics
exporter), one with `--metrics-address` (scraped once a second while it is
measured, as a busy Prometheus would) and one on TLS with a certificate made
here. Each is
measured on scenario 1's figure (one stream, ping-pong) and scenario 2's
(100 streams), rotating over the three servers round by round; every ratio is
to the plain server. The core's counters behind the metrics are always on,
so the metrics figure is the exporter and its scrapes; what the counters
themselves cost was measured against the tree before them (README).
"""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from seqserve.bench.drivers import LoadResult
from seqserve.bench.measure import Context, Measured, interleaved, stream
from seqserve.bench.procs import ServerProcess
from seqserve.bench.report import Row, Target

METRICS_TARGET = Target(">=", 0.97)  # metrics may cost at most 3 % of throughput
SCRAPE_S = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def _scraping(port: int) -> Iterator[list[int]]:
    """GET /metrics every SCRAPE_S seconds until the block ends; yields the count of scrapes."""
    done = threading.Event()
    scrapes = [0]

    def scrape() -> None:
        while not done.wait(SCRAPE_S):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    r.read()
                scrapes[0] += 1
            except OSError:
                pass  # a slow scrape is the server's figure, not the benchmark's failure

    thread = threading.Thread(target=scrape, name="bench-scraper", daemon=True)
    thread.start()
    try:
        yield scrapes
    finally:
        done.set()
        thread.join(10)


def operations(ctx: Context, start: Callable[[list[str]], ServerProcess], out: Path) -> None:
    """Scenario 9 (needs servers of its own: not with --target)."""
    c = ctx.config
    model, n, r = c.main_model, c.store_streams, c.store_rounds
    with ExitStack() as stack:
        # A plain server started as the other two are (not the main server, whose history
        # of earlier scenarios would weigh on one side of the ratios only).
        fresh = stack.enter_context(start([]))
        targets = {"plain": fresh.start()}
        ctx.pids[targets["plain"]] = fresh.pid
        metrics_port = _free_port()
        metrics = stack.enter_context(start(["--metrics-address", f"127.0.0.1:{metrics_port}"]))
        targets["metrics"] = metrics.start()
        ctx.pids[targets["metrics"]] = metrics.pid
        try:
            from seqserve.bench.certs import Authority  # cryptography: the dev extra
        except ImportError:
            ctx.say("s9: cryptography is not installed: TLS is not measured")
        else:
            ca = Authority(out / "bench-certs")
            pair = ca.issue("server", "seqserve", server=True)
            tls = stack.enter_context(
                start(["--tls-cert", str(pair.cert), "--tls-key", str(pair.key)])
            )
            targets["tls"] = tls.start()
            ctx.pids[targets["tls"]] = tls.pid
            ctx.tls[targets["tls"]] = str(ca.cert)
        scrapes = stack.enter_context(_scraping(metrics_port))
        names, addresses = list(targets), list(targets.values())
        loads: dict[str, tuple[str, Callable[[str], LoadResult]]] = {
            "latency": ("1 stream", lambda t: stream(ctx, t, model, 1, 1)),
            "streams": (f"{n} streams", lambda t: stream(ctx, t, model, n, 1)),
        }
        figures: dict[str, list[Measured]] = {}
        for what, (label, load) in loads.items():
            ctx.say(f"s9: {label} on {', '.join(names)}, {r} round(s) each")
            figures[what] = interleaved(ctx, load, addresses, r)
    details: dict[str, Any] = {"streams": n, "rounds": r, "scrapes": scrapes[0]}
    plain = {what: ms[0] for what, ms in figures.items()}
    for i, name in enumerate(names):
        got = {what: ms[i] for what, ms in figures.items()}
        details[name] = {what: m.to_dict() for what, m in got.items()}
        if name == "plain":
            continue
        target = METRICS_TARGET if name == "metrics" else None
        lat, base = got["latency"], plain["latency"]
        ctx.say(
            f"s9 {name}: p50 {lat.latency['p50']:.0f} us (plain {base.latency['p50']:.0f}), "
            f"{n} streams {got['streams'].rate:,.0f}/s (plain {plain['streams'].rate:,.0f})"
        )
        scen = f"9 {name} on"
        ctx.rows += [
            Row(scen, "steps/s, 1 stream", lat.rate, "/s", base.rate, "plain server", target),
            Row(scen, "p50 round trip, 1 stream", lat.latency["p50"], "us",
                base.latency["p50"], "plain server", None),
            Row(scen, f"steps/s, {n} streams", got["streams"].rate, "/s",
                plain["streams"].rate, "plain server", target),
        ]  # fmt: skip
        cpu, base_cpu = got["streams"].cpu_us_per_msg, plain["streams"].cpu_us_per_msg
        if cpu is not None:  # known for servers started here
            ctx.rows.append(Row(scen, f"server CPU per step, {n} streams", cpu, "us", base_cpu,
                                "plain server", None))  # fmt: skip
    ctx.details["9"] = details
