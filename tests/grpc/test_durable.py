"""Durable sessions over gRPC: killed servers lose no acknowledged step, exports travel.

Every server here is a real process killed with SIGKILL at random moments;
the stores are a real SQLite file and a real Redis server. Clients are the
project's session handles, which resend unanswered steps with their positions.
For every session, the outputs the clients received must equal PyTorch's
forward over the whole sequence: none lost, none applied twice.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from seqserve.api import seqserve_pb2 as pb
from seqserve.client import (
    AlreadyExistsError,
    Client,
    InvalidArgumentError,
    NotFoundError,
    RetryPolicy,
)
from tests.grpc.conftest import TOL, Zoo
from tests.grpc.harness import ServerProcess
from tests.store.conftest import RedisServer, free_port, redis_server

__all__ = ["redis_server"]  # the fixture, shared with tests/store

MODEL = "gru-ar"  # two inputs, two outputs
STEPS = 48  # per session


class Restartable:
    """A server process on a fixed port and store, which the test kills and starts again."""

    def __init__(self, zoo: Zoo, store: str) -> None:
        self.args = ["--repository", str(zoo.repository), "--store", store, "--grace-period", "1"]
        self.port = free_port()
        self.proc: ServerProcess | None = None
        self.starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = ServerProcess(*self.args, "--address", self.target).__enter__()
        self.starts += 1

    def kill(self) -> None:
        assert self.proc is not None and self.proc.proc is not None
        self.proc.proc.kill()  # SIGKILL: no drain, no last checkpoint
        self.proc.__exit__(None, None, None)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            assert self.proc.wait(timeout=20) == 0, "".join(self.proc.log)
            self.proc.__exit__(None, None, None)
            self.proc = None


@pytest.fixture
def sqlite_server(zoo: Zoo, tmp_path: Path) -> Iterator[Restartable]:
    server = Restartable(zoo, f"sqlite:{tmp_path / 'sessions.db'}")
    server.start()
    yield server
    if server.proc is not None:
        server.kill()


def stream_sessions(
    server: Restartable, zoo: Zoo, n: int, chaos: Callable[[], None], seed: int, pace_s: float
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """n sessions stream STEPS steps each, in chunks of 1-3 about `pace_s` apart, as
    sensors would, while `chaos()` kills things; every stream outlives the chaos."""
    rng = np.random.default_rng(seed)
    series: dict[str, np.ndarray] = {}
    got: dict[str, list[np.ndarray]] = {}
    finished: dict[str, float] = {}
    errors: list[BaseException] = []
    with Client(server.target, retry=RetryPolicy(deadline_s=60)) as client:
        sessions = [client.session(MODEL) for _ in range(n)]

        def drive(i: int) -> None:
            s = sessions[i]
            x = zoo.inputs(MODEL, STEPS, np.random.default_rng(seed * 1000 + i))
            cuts = np.cumsum(rng.integers(1, 4, STEPS))
            chunks = np.split(x, cuts[cuts < STEPS])
            series[s.id], got[s.id] = x, []
            pace = random.Random(seed * 1000 + i)

            def paced() -> Iterator[np.ndarray]:
                for chunk in chunks:
                    time.sleep(pace.uniform(0.5, 1.5) * pace_s)
                    yield chunk

            try:
                for y in s.stream(paced()):
                    got[s.id].append(y)
            except BaseException as exc:
                errors.append(exc)
            finished[s.id] = time.monotonic()

        threads = [threading.Thread(target=drive, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        chaos()
        chaos_over = time.monotonic()
        for t in threads:
            t.join(timeout=180)
        assert not errors, errors[:3]
        positions = {s.id: s.info().position for s in sessions}
        retries = sum(s.retries for s in sessions)
    assert positions == dict.fromkeys(series, STEPS)  # every step applied once
    assert min(finished.values()) > chaos_over  # every stream lived through all of it
    assert retries >= n  # and was broken and resumed
    return series, {sid: np.concatenate(ys) for sid, ys in got.items()}


def assert_all_match(zoo: Zoo, series: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> None:
    for sid, x in series.items():
        assert got[sid].shape == (STEPS, 2), sid
        np.testing.assert_allclose(got[sid], zoo.forward(MODEL, x), rtol=TOL, atol=TOL, err_msg=sid)


def killing(server: Restartable, kills: int, seed: int, wait: float = 0.0) -> None:
    rng = random.Random(seed)
    for _ in range(kills):
        time.sleep(rng.uniform(0.1, 0.5))
        server.kill()
        time.sleep(wait)
        server.start()


def test_kill_9_at_20_random_moments_loses_no_acknowledged_step_sqlite(
    sqlite_server: Restartable, zoo: Zoo
) -> None:
    series, got = stream_sessions(
        sqlite_server, zoo, 64, lambda: killing(sqlite_server, 20, seed=1), seed=1, pace_s=1.0
    )
    assert sqlite_server.starts == 21
    assert_all_match(zoo, series, got)
    sqlite_server.stop()  # and a clean stop after all that still exits 0


def test_kill_9_with_the_redis_store_and_redis_itself_killed(
    zoo: Zoo, redis_server: RedisServer
) -> None:
    """The server is killed twice (Redis kept) and started again at once, then Redis itself
    is killed -9 and restarted from its append-only file, which it writes before replying:
    no acknowledged step is lost, and the server rides out Redis's absence."""
    server = Restartable(zoo, redis_server.url)
    server.start()

    def chaos() -> None:
        killing(server, 2, seed=2)
        time.sleep(0.5)
        redis_server.kill()
        time.sleep(0.5)
        redis_server.start()
        time.sleep(1.0)

    try:
        series, got = stream_sessions(server, zoo, 16, chaos, seed=2, pace_s=1.0)
        assert_all_match(zoo, series, got)
        assert server.proc is not None and server.proc.proc is not None
        assert server.proc.proc.poll() is None  # still serving: a store outage is not fatal
    finally:
        if server.proc is not None:
            server.kill()


def test_a_server_whose_journal_cannot_be_written_stops_with_exit_3(
    zoo: Zoo, tmp_path: Path
) -> None:
    """SQLite's write-ahead log stops growing at 256 KiB (RLIMIT_FSIZE, as a full disk):
    nothing more can be acknowledged, so the server stops with exit code 3."""
    args = ["--repository", str(zoo.repository), "--store", f"sqlite:{tmp_path / 's.db'}"]
    with ServerProcess(*args, max_file_bytes=256 * 1024) as proc:
        with Client(proc.target, retry=RetryPolicy(deadline_s=0)) as client:
            s = client.session(MODEL)
            with pytest.raises(Exception, match="UNAVAILABLE"):
                for _ in range(10_000):
                    s.step(np.zeros(2, np.float32))
        assert proc.wait(timeout=30) == 3
        log = "".join(proc.log)
        assert "the session store failed" in log


def test_export_and_import_continue_a_session_in_another_server(zoo: Zoo, tmp_path: Path) -> None:
    x = zoo.inputs(MODEL, 30, np.random.default_rng(3))
    with ServerProcess("--repository", str(zoo.repository)) as a, Client(a.target) as client:
        s = client.session(MODEL, session_id="meter-9")
        first = s.step(x[:20])
        state = s.export()
    parsed = pb.SessionState.FromString(state)  # self-describing: readable without seqserve
    assert (parsed.model, parsed.version, parsed.position) == (MODEL, "1", 20)
    assert [(t.name, list(t.shape)) for t in parsed.states] == [("h0", [1, 12])]
    with (
        ServerProcess(
            "--repository", str(zoo.repository), "--store", f"sqlite:{tmp_path / 'b'}"
        ) as b,
        Client(b.target) as client,
    ):
        info = client.import_session(state)
        assert (info.session_id, info.position) == ("meter-9", 20)
        # A retry of the step exported with it gets that step's answer there too.
        np.testing.assert_array_equal(client.step("meter-9", x[:20], position=0), first)
        rest = client.step("meter-9", x[20:], position=20)
        zoo.assert_matches(MODEL, x, np.concatenate([first, rest]))
        copy = client.import_session(state, session_id="meter-9-copy")
        assert copy.position == 20
        with pytest.raises(AlreadyExistsError):
            client.import_session(state)

        corrupted = pb.SessionState.FromString(state)
        data = bytearray(corrupted.states[0].data)
        data[5] ^= 0x01  # one bit of one state value
        corrupted.states[0].data = bytes(data)
        with pytest.raises(InvalidArgumentError, match="checksum does not match"):
            client.import_session(corrupted.SerializeToString(), session_id="other")

        renamed = pb.SessionState.FromString(state)
        renamed.model = "lstm-ar"  # any change to what it says is a corruption too
        with pytest.raises(InvalidArgumentError, match="checksum does not match"):
            client.import_session(renamed.SerializeToString(), session_id="other")
        with pytest.raises(InvalidArgumentError, match="do not parse"):
            client.import_session(b"\xff\xff\xff", session_id="other")
        truncated = pb.SessionState.FromString(state)
        truncated.states[0].data = truncated.states[0].data[:3]
        with pytest.raises(InvalidArgumentError, match="expected 48 bytes of float32 for shape"):
            client.import_session(truncated.SerializeToString(), session_id="other")
    # Another deployment that serves a different model under the same name and version.
    other = tmp_path / "other-repository"
    shutil.copytree(zoo.repository / "lstm-ar", other / MODEL)
    with ServerProcess("--repository", str(other)) as c, Client(c.target) as client:
        expected = r"gru-ar/1: expected state tensors h0 \[2, 16\], c0 \[2, 16\], got h0 \[1, 12\]"
        with pytest.raises(InvalidArgumentError, match=expected):
            client.import_session(state)
        with pytest.raises(NotFoundError):
            client.get_session("meter-9")  # nothing was created
