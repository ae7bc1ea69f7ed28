"""Prometheus metrics on `--metrics-address`: the core's own figures, read when scraped.

Nothing is counted per message here: steps, rounds, sessions and store writes
are the figures the core keeps (seqserve.core.figures and the counters of each
model version, batcher and store), and requests by RPC and status code are
counted by the front end as it answers. A collector turns them into metric
families at each scrape, on prometheus_client's HTTP thread; it only reads
numbers the event loop writes.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)

from seqserve.core.figures import Histogram

if TYPE_CHECKING:
    from seqserve.core.sessions import SessionManager

log = logging.getLogger(__name__)

VERSION_LABELS = ["model", "version"]


def _histogram(family: HistogramMetricFamily, labels: list[str], h: Histogram) -> None:
    family.add_metric(labels, [(b, float(n)) for b, n in h.cumulative()], h.total)


class CoreCollector:
    """Every metric of one server, built from its session manager and front end at scrape."""

    def __init__(self, sessions: SessionManager, requests: Counter[tuple[str, str]]) -> None:
        self._sessions = sessions
        self._requests = requests

    def collect(self) -> Iterator[Any]:
        m = self._sessions
        fam: dict[str, Any] = {
            "open": GaugeMetricFamily(
                "seqserve_sessions_open", "Sessions held by this server", labels=VERSION_LABELS
            ),
            "idle": GaugeMetricFamily(
                "seqserve_sessions_idle",
                "Open sessions without a step for 60 s or more",
                labels=VERSION_LABELS,
            ),
            "created": CounterMetricFamily(
                "seqserve_sessions_created", "Sessions created or imported", labels=VERSION_LABELS
            ),
            "closed": CounterMetricFamily(
                "seqserve_sessions_closed",
                "Sessions closed by their clients",
                labels=VERSION_LABELS,
            ),
            "expired": CounterMetricFamily(
                "seqserve_sessions_expired",
                "Sessions evicted after the idle timeout",
                labels=VERSION_LABELS,
            ),
            "bytes": GaugeMetricFamily(
                "seqserve_state_bytes",
                "Bytes of the open sessions' slots: state, last output, retained answers",
                labels=VERSION_LABELS,
            ),
            "steps": CounterMetricFamily(
                "seqserve_session_steps", "Session-steps applied", labels=VERSION_LABELS
            ),
            "queue": GaugeMetricFamily(
                "seqserve_queue_depth", "Steps queued and not yet in a round", labels=VERSION_LABELS
            ),
            "rows": HistogramMetricFamily(
                "seqserve_round_rows", "Requests in one batch round", labels=VERSION_LABELS
            ),
            "seconds": HistogramMetricFamily(
                "seqserve_round_seconds",
                "Seconds from a batch round's start to its answers' release",
                labels=VERSION_LABELS,
            ),
            "info": InfoMetricFamily(
                "seqserve_model", "A served model version", labels=VERSION_LABELS
            ),
        }
        now = m.clock
        for v in m.versions:
            if m.loaded(v.model.name, v.model.version) is not v or v.batcher.stopped:
                continue  # removed and unloaded, or superseded under its label by a reload
            labels = [v.model.name, v.model.version]
            slab, spec = v.slab, v.spec
            open_ = slab.used
            fam["open"].add_metric(labels, open_)
            fam["idle"].add_metric(labels, len(slab.idle_since(now - 60.0)))
            fam["created"].add_metric(labels, v.created)
            fam["closed"].add_metric(labels, v.closed)
            fam["expired"].add_metric(labels, v.expired)
            per_session = slab.bytes_per_slot()
            fam["bytes"].add_metric(labels, slab.used_bytes())
            runner = v.batcher.runner
            fam["steps"].add_metric(labels, runner.steps)
            fam["queue"].add_metric(labels, v.batcher.queued)
            _histogram(fam["rows"], labels, runner.round_rows)
            _histogram(fam["seconds"], labels, runner.round_seconds)
            fam["info"].add_metric(
                labels,
                {
                    "cell": spec.cell,
                    "input_size": str(spec.input_size),
                    "output_size": str(spec.output_size),
                    "bytes_per_session": str(per_session),
                    # removed: gone from the repository, serving its open sessions only
                    "state": "removed" if v.retired else "serving",
                },
            )
        yield from fam.values()
        requests = CounterMetricFamily(
            "seqserve_requests",
            "Requests answered, by RPC and status code (each StepStream message counts)",
            labels=["rpc", "code"],
        )
        for (rpc, code), n in sorted(self._requests.items()):
            requests.add_metric([rpc, code], n)
        yield requests
        store = m.store_figures()
        if store is not None:
            name, h = store
            writes = HistogramMetricFamily(
                "seqserve_store_write_seconds",
                "Seconds of one session-store write",
                labels=["store"],
            )
            _histogram(writes, [name], h)
            yield writes


def serve_metrics(
    address: str, sessions: SessionManager, requests: Counter[tuple[str, str]]
) -> tuple[Any, int]:
    """Start the HTTP server for /metrics on HOST:PORT; (its server, the port it bound)."""
    host, _, port = address.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CoreCollector(sessions, requests))
    server, _thread = start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)
    bound = int(server.server_port)
    log.info("metrics on http://%s:%d/metrics", host or "0.0.0.0", bound)
    return server, bound
