"""The benchmark works end to end: a tiny run (`--smoke`) against a real server.

No timing is asserted: figures vary from machine to machine; the benchmark
itself reports them as ratios against floors measured in the same run. These
tests check that every scenario ran, that each figure is a real measurement
(finite, positive) with its floor and ratio consistent, and that the JSON,
tables and plots are written.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from seqserve.api import seqserve_pb2 as pb
from seqserve.bench import main
from seqserve.bench.compare import compare
from seqserve.bench.config import SMOKE
from seqserve.bench.drivers import BatchJob, CreateJob, StreamJob
from seqserve.bench.echo import InlineReference
from seqserve.bench.pool import split_job
from seqserve.bench.report import Row, Target, format_table
from seqserve.core.runtime import ModelRegistry

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("bench-out")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["--smoke", "--out", str(out)]) == 0
    return out, buf.getvalue()


def _doc(out: Path) -> dict[str, Any]:
    doc = json.loads((out / "bench.json").read_text())
    assert isinstance(doc, dict)
    return doc


def test_every_scenario_reports_its_figures(smoke_run: tuple[Path, str]) -> None:
    out, _ = smoke_run
    rows = _doc(out)["rows"]
    by_scenario: dict[str, set[str]] = {}
    for r in rows:
        by_scenario.setdefault(r["scenario"], set()).add(r["figure"])
    assert by_scenario["1 latency"] >= {
        "p50 round trip",
        "p99 round trip",
        "p50 inline reference",
        "p50 against the reference",
    }
    for n in SMOKE.concurrency:
        assert by_scenario[f"2 concurrency {n}"] >= {
            "steps/s",
            "p50 round trip",
            "sessions starved",
            "steps/s inline reference",
        }
    for b in SMOKE.batch_sizes:
        for k in SMOKE.inflight:
            assert "session-steps/s" in by_scenario[f"3 bulk B={b} x{k}"]
    assert by_scenario[f"4 chunks T={SMOKE.chunk}"] >= {
        f"steps/s, {SMOKE.chunk_depth} in flight",
        "steps/s, ping-pong",
    }
    scale = [s for s in by_scenario if s.startswith("5 scale")]
    assert len(scale) == 1 and "RSS growth per session" in by_scenario[scale[0]]
    assert {s for s in by_scenario if s.startswith("6 cells")} == {
        f"6 cells {c}" for c in SMOKE.cells
    }
    for store in ("sqlite", "redis"):  # redis-server is installed wherever the tests run
        assert by_scenario[f"7 store {store}"] == {
            "p50 round trip, 1 stream",
            f"steps/s, {SMOKE.store_streams} streams",
            f"B={max(SMOKE.batch_sizes)} x{max(SMOKE.inflight)} session-steps/s",
        }
    n = SMOKE.store_streams  # redis-server and envoy (a dev dependency) are installed too
    assert by_scenario["8 replicas"] == {
        "p50 round trip, Envoy + Redis, 1 stream",
        f"steps/s, {n} streams, 2 replicas",
        f"server CPU per step, {n} streams, 1 replica",
        f"server CPU per step, {n} streams, 2 replicas",
        f"machine cores busy, {n} streams, 1 replica",
        f"machine cores busy, {n} streams, 2 replicas",
    }
    for name in ("metrics", "tls"):  # cryptography (a dev dependency) makes the certificate
        assert by_scenario[f"9 {name} on"] == {
            "steps/s, 1 stream",
            "p50 round trip, 1 stream",
            f"steps/s, {n} streams",
            f"server CPU per step, {n} streams",
        }
    for streams in (1, n):
        assert by_scenario[f"10 kserve {streams}"] == {
            "steps/s",
            "p50 round trip",
            "server CPU per step",
        }
    ops = _doc(out)["details"]["9"]
    assert ops["scrapes"] >= 1  # the metrics server was scraped while it was measured


def test_figures_are_measurements_with_consistent_floors(smoke_run: tuple[Path, str]) -> None:
    out, _ = smoke_run
    doc = _doc(out)
    for r in doc["rows"]:
        assert math.isfinite(r["value"]), r
        if r["figure"] == "sessions starved" or "CPU" in r["figure"]:
            assert r["value"] >= 0, r  # CPU is counted in 10 ms ticks: a short window may read 0
        elif "RSS growth" not in r["figure"]:  # memory may, rarely, shrink
            assert r["value"] > 0, r
        if r["floor"] is not None:
            assert r["floor"] > 0, r
            assert r["ratio"] == pytest.approx(r["value"] / r["floor"]), r
        if r["target"] is not None:
            assert isinstance(r["passed"], bool), r
    summary = doc["summary"]
    assert summary["targets"] == sum(1 for r in doc["rows"] if r["target"] is not None)
    assert summary["met"] == sum(1 for r in doc["rows"] if r["passed"])
    assert doc["details"]["5"]["sessions"] == SMOKE.idle_sessions  # all opened, none failed


def test_floors_are_measured_in_the_same_run(smoke_run: tuple[Path, str]) -> None:
    out, _ = smoke_run
    ort = _doc(out)["floors"]["ort"]
    shapes = {(f["model"], f["batch"], f["steps"]) for f in ort}
    main_model = SMOKE.main_model.name
    assert (main_model, 1, 1) in shapes
    assert (main_model, 1, SMOKE.chunk) in shapes
    assert {(main_model, b, 1) for b in SMOKE.batch_sizes} <= shapes
    for f in ort:
        assert f["median_s"] > 0 and f["runs"] >= 5
        assert f["rows_per_s"] == pytest.approx(f["batch"] * f["steps"] / f["median_s"])


def test_table_and_plots_are_written(smoke_run: tuple[Path, str]) -> None:
    out, printed = smoke_run
    rows = _doc(out)["rows"]
    table = (out / "table.txt").read_text()
    assert table.strip() in printed
    assert len(table.strip().splitlines()) == len(rows) + 2  # header and rule
    md = (out / "table.md").read_text().strip().splitlines()
    assert len(md) == len(rows) + 2
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "throughput-concurrency.png" in pngs and "memory-sessions.png" in pngs
    assert {"latency-1-latency.png", "latency-2-concurrency.png"} <= set(pngs)
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_rows_hold_targets_on_the_ratio_or_on_the_value() -> None:
    fast = Row("s", "steps/s", 95.0, "1/s", 100.0, "echo", Target(">=", 0.9))
    slow = Row("s", "steps/s", 85.0, "1/s", 100.0, "echo", Target(">=", 0.9))
    starved = Row("s", "sessions starved", 3, "", None, "", Target("<=", 0, on_value=True))
    info = Row("s", "p99", 5.0, "us", 2.0, "echo")
    assert (fast.ratio, fast.passed) == (pytest.approx(0.95), True)
    assert slow.passed is False
    assert (starved.ratio, starved.passed) == (None, False)
    assert (info.ratio, info.passed) == (pytest.approx(2.5), None)
    table = format_table([fast, slow, starved, info]).splitlines()
    assert [line.split()[-1] for line in table[2:5]] == ["pass", "FAIL", "FAIL"]


def test_load_is_split_over_client_processes_without_losing_any() -> None:
    stream = StreamJob("t", "m", streams=1001, values=1, steps=1, outputs=1, warmup_s=0,
                       window_s=1, max_messages=1)  # fmt: skip
    parts = split_job(stream, 2)
    assert [p.streams for p in parts] == [501, 500]
    one = split_job(StreamJob("t", "m", 1, 1, 1, 1, 0, 1, 1), 2)
    assert len(one) == 1  # one session: one client, so no process sits idle in the window
    bulk = split_job(BatchJob("t", "m", 256, inflight=3, input_size=1, output_size=1, warmup_s=0,
                           window_s=1, max_messages=1), 2)  # fmt: skip
    assert [p.inflight for p in bulk] == [2, 1] and all(p.batch == 256 for p in bulk)
    create = split_job(CreateJob("t", "m", count=7, concurrency=4, budget_s=1), 3)
    assert sum(p.count for p in create) == 7


def test_compare_matches_rows_of_two_runs(tmp_path: Path) -> None:
    def run(p50: float, sessions: int, per_session: float) -> Path:
        rows = [
            Row("1 latency", "p50 round trip", p50, "us", 200.0, "echo", Target("<=", 1.3)),
            Row(f"5 scale {sessions:,} idle", "RSS growth per session", per_session, "B", 1024.0),
        ]
        path = tmp_path / f"{p50}.json"
        path.write_text(json.dumps({"rows": [r.to_dict() for r in rows]}))
        return path

    lines = compare(run(400.0, 1000, 2048.0), run(300.0, 2000, 1536.0)).splitlines()
    assert len(lines) == 2  # scenario 5 matched although its session count differs
    latency, memory = (line.split("  ") for line in lines)
    assert latency[:5] == ["1 latency", "p50 round trip", "400 us", "300 us", "0.75x"]
    assert latency[5:] == ["2.00x", "1.50x"]  # ratios against the 200 us floor
    assert memory[0] == "5 scale 2,000 idle" and memory[4] == "0.75x"


def test_the_inline_reference_steps_the_model(smoke_run: tuple[Path, str]) -> None:
    """Its figure means something only if it really runs the model per step, with state."""
    out, _ = smoke_run
    model = ModelRegistry.load(out / "repository").get(SMOKE.main_model.name)
    ref = InlineReference(model)
    x = np.random.default_rng(3).normal(size=(6, model.spec.input_size)).astype(np.float32)

    async def drive() -> list[Any]:
        info = await ref.CreateSession(pb.CreateSessionRequest(model=model.name), None)  # type: ignore[arg-type]

        async def requests() -> AsyncIterator[pb.StepRequest]:
            for row in (x[:2], x[2:3], x[3:]):  # chunks of 2, 1 and 3 steps
                yield pb.StepRequest(session_id=info.session_id, values=row.ravel().tolist())

        return [r async for r in ref.StepStream(requests(), None)]  # type: ignore[arg-type]

    answers = asyncio.run(drive())
    assert [a.position for a in answers] == [2, 3, 6]
    want, _ = model.run(x[None], model.zero_states(1))  # (1, 6, O) in one call
    got = np.concatenate([np.asarray(a.outputs, np.float32) for a in answers])
    np.testing.assert_allclose(got, want.ravel(), rtol=0, atol=1e-5)


def test_stages_account_for_the_request_and_leave_nothing_wrapped(
    smoke_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The in-process stage timing of a BatchStep: nested stages within their parents,
    every stage within the request, and the server's functions restored afterwards."""
    from seqserve.bench import stages
    from seqserve.core.slab import Slab

    out, _ = smoke_run
    repository = out / "repository"
    model = next(p.name for p in sorted(repository.iterdir()) if p.name.startswith("bench-lstm"))
    gather = Slab.gather
    figures = asyncio.run(stages.measure(repository, model, batch=8, requests=20))
    assert Slab.gather is gather  # unwrapped
    request = figures["request"]
    assert figures["  ONNX Runtime"] <= figures["model calls (worker, or loop if small)"] <= request
    assert figures["    scatter states"] <= figures["  commit"] <= request
    assert figures["session lookup"] > 0 and figures["encode the answer"] > 0
    top = [label for *_, label in stages.STAGES if not label.startswith(" ")]
    assert sum(figures.get(label, 0.0) for label in top) < 1.2 * request  # none counted twice
    assert stages.main(["--repository", str(repository), "--model", model, "--batch", "4",
                        "--requests", "8"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "ONNX Runtime" in printed and "us/session-step" in printed
