"""Prometheus metrics: a scripted workload, then the scraped values it must have produced."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from seqserve.client import Client, NotFoundError
from tests.grpc.conftest import Zoo, settings_for
from tests.grpc.harness import ServerThread

MODEL = "gru-ar"  # 2 inputs, 2 outputs


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_what_a_scripted_workload_did(zoo: Zoo, tmp_path: Path) -> None:
    settings = settings_for(zoo.repository, metrics_address="127.0.0.1:0")
    with ServerThread(settings) as running, Client(running.target) as client:
        assert running.server is not None
        port = running.server.metrics_port
        assert port > 0
        before = scrape(port)
        version = {("model", MODEL), ("version", "1")}

        def value(name: str, **labels: str) -> float:
            key = (
                tuple(sorted({*version, *labels.items()}))
                if "rpc" not in labels
                else tuple(sorted(labels.items()))
            )
            return got.get((name, key), 0.0) - before.get((name, key), 0.0)

        ids = [client.create_session(MODEL).session_id for _ in range(3)]
        for sid in ids:
            for k in range(5):
                client.step(sid, np.float32([k, k]))  # 5 unary steps each, one round each
        s = client.session(MODEL)  # a 4th session: 3 chunks on one stream, 6 steps
        list(s.stream([np.zeros((1, 2)), np.zeros((2, 2)), np.zeros((3, 2))]))
        client.batch_step({ids[0]: [1.0, 1.0], ids[1]: np.zeros((2, 2))})  # 3 session-steps
        with pytest.raises(NotFoundError):
            client.step("no-such-session", [1.0, 1.0])
        client.close_session(ids[2])
        got = scrape(port)

        assert value("seqserve_sessions_created_total") == 4
        assert value("seqserve_sessions_closed_total") == 1
        assert value("seqserve_sessions_open") == 3
        assert value("seqserve_session_steps_total") == 15 + 6 + 3
        # The unary steps each made a round of one row; the batch made one of two.
        assert value("seqserve_round_rows_bucket", le="1.0") >= 15
        assert value("seqserve_round_rows_count") >= 15 + 1
        assert value("seqserve_round_seconds_count") == value("seqserve_round_rows_count")
        assert value("seqserve_requests_total", rpc="Step", code="OK") == 15
        assert value("seqserve_requests_total", rpc="Step", code="NOT_FOUND") == 1
        assert value("seqserve_requests_total", rpc="StepStream", code="OK") == 3
        assert value("seqserve_requests_total", rpc="BatchStep", code="OK") == 1
        assert value("seqserve_requests_total", rpc="CreateSession", code="OK") == 4
        info_value = next(
            v
            for (name, labels), v in got.items()
            if name == "seqserve_model_info" and ("model", MODEL) in labels
        )
        assert info_value == 1.0
        info = next(
            dict(labels)
            for (name, labels) in got
            if name == "seqserve_model_info" and ("model", MODEL) in labels
        )
        assert info["cell"] == "gru" and info["input_size"] == "2"
        bytes_each = int(info["bytes_per_session"])
        assert value("seqserve_state_bytes") == 3 * bytes_each
        assert value("seqserve_queue_depth") == 0  # everything answered


def test_metrics_are_off_unless_asked_for(zoo: Zoo) -> None:
    with ServerThread(settings_for(zoo.repository)) as running:
        assert running.server is not None and running.server.metrics_port == 0


def test_a_store_reports_its_write_latency(zoo: Zoo, tmp_path: Path) -> None:
    store = f"sqlite:{tmp_path / 's.db'}"
    settings = settings_for(zoo.repository, metrics_address="127.0.0.1:0", store=store)
    with ServerThread(settings) as running, Client(running.target) as client:
        assert running.server is not None
        sid = client.create_session(MODEL).session_id
        for k in range(4):
            client.step(sid, np.float32([k, k]))
        got = scrape(running.server.metrics_port)
    where = (("store", f"sqlite:{tmp_path / 's.db'}"),)
    writes = got[("seqserve_store_write_seconds_count", where)]
    assert writes >= 5  # the create and each step, each written before its answer
    assert got[("seqserve_store_write_seconds_bucket", (("le", "+Inf"), *where))] == writes
