"""Several replicas share sessions on a real Redis, behind a real Envoy (deploy/envoy/envoy.yaml).

Replicas are server processes killed with SIGKILL or restarted one by one
while clients stream through Envoy; the clients are the project's session
handles, which resend unanswered steps with their positions. Every
session's outputs must equal PyTorch's forward over the whole sequence.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from seqserve.bench.envoy import Envoy
from seqserve.client import (
    Client,
    FailedPreconditionError,
    NotFoundError,
    RetryPolicy,
    UnavailableError,
)
from seqserve.client._common import SESSION_HEADER, from_stream_error, routed
from tests.grpc.conftest import Zoo
from tests.grpc.test_durable import Restartable, assert_all_match, stream_sessions
from tests.store.conftest import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, shared with tests/store

MODEL = "gru-ar"


@pytest.fixture
def replicas(zoo: Zoo, redis_server: RedisServer) -> Iterator[list[Restartable]]:
    servers = [Restartable(zoo, redis_server.url) for _ in range(3)]
    for s in servers:
        s.start()
    yield servers
    for s in servers:
        if s.proc is not None:
            s.kill()


class _Target:
    def __init__(self, target: str) -> None:
        self.target = target


def test_kill_9_and_a_rolling_restart_behind_envoy_lose_no_acknowledged_step(
    zoo: Zoo, replicas: list[Restartable], tmp_path: Path
) -> None:
    rng = random.Random(11)

    def chaos() -> None:
        for victim in (0, 2):  # two kills, of different replicas, at different moments
            time.sleep(rng.uniform(2.0, 4.0))
            replicas[victim].kill()
            time.sleep(0.5)
            replicas[victim].start()
        for server in replicas:  # a rolling restart: one at a time, each drained first
            time.sleep(1.0)
            server.stop()
            server.start()

    with Envoy(tmp_path, [r.port for r in replicas]) as envoy:
        through = _Target(envoy.target)
        series, got = stream_sessions(through, zoo, 100, chaos, seed=4, pace_s=1.6)  # type: ignore[arg-type]
    assert_all_match(zoo, series, got)


def test_steps_racing_on_two_replicas_are_applied_once_per_position(
    replicas: list[Restartable],
) -> None:
    no_retry = RetryPolicy(deadline_s=0)
    with (
        Client(replicas[0].target, retry=no_retry) as a,
        Client(replicas[1].target, retry=no_retry) as b,
    ):
        sid = a.create_session(MODEL).session_id
        b.get_session(sid)  # both hold a copy
        outcomes: dict[str, int] = {"applied": 0, "unavailable": 0, "refused": 0}
        for i in range(20):
            results: list[object] = [None, None]

            def send(
                k: int,
                client: Client,
                values: np.ndarray,
                i: int = i,
                results: list[object] = results,
            ) -> None:
                try:
                    results[k] = client.step(sid, values, position=i)
                except (UnavailableError, FailedPreconditionError) as exc:
                    results[k] = exc

            threads = [
                threading.Thread(target=send, args=(0, a, np.float32([i, 0]))),
                threading.Thread(target=send, args=(1, b, np.float32([0, i]))),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
            applied = [r for r in results if isinstance(r, np.ndarray)]
            assert len(applied) == 1, results  # one of the two, never both
            outcomes["applied"] += 1
            for r in results:
                outcomes["unavailable"] += isinstance(r, UnavailableError)
                outcomes["refused"] += isinstance(r, FailedPreconditionError)
        assert a.get_session(sid).position == 20 == b.get_session(sid).position
    assert outcomes["applied"] == 20
    assert outcomes["unavailable"] + outcomes["refused"] == 20


@pytest.fixture
def unshared(zoo: Zoo) -> Iterator[list[Restartable]]:
    """Replicas that share nothing (memory store): a session works only where it was made."""
    servers = [Restartable(zoo, "memory") for _ in range(3)]
    for s in servers:
        s.start()
    yield servers
    for s in servers:
        s.kill()


@pytest.mark.parametrize("route", ["envoy", "client ring hash"])
def test_every_call_of_a_session_reaches_one_replica(
    route: str, unshared: list[Restartable], tmp_path: Path
) -> None:
    """Routing by the session header, seen through replicas that share nothing: every
    step finds its session only if it reached the replica that created it."""
    with contextlib.ExitStack() as stack:
        if route == "envoy":
            target = stack.enter_context(Envoy(tmp_path, [r.port for r in unshared])).target
            client = stack.enter_context(Client(target))
        else:
            target = "ipv4:" + ",".join(r.target for r in unshared)
            client = stack.enter_context(Client(target, ring_hash=True))
        ids = [f"meter-{i}" for i in range(30)]
        for sid in ids:
            client.create_session(MODEL, session_id=sid)
            for k in range(5):
                client.step(sid, np.float32([k, -k]), position=k)
            assert client.get_session(sid).position == 5
    holders = []
    for replica in unshared:
        with Client(replica.target) as direct:
            held = 0
            for sid in ids:
                with contextlib.suppress(NotFoundError):
                    held += direct.get_session(sid).position == 5
            holders.append(held)
    assert sum(holders) == len(ids)  # each session on exactly one replica
    assert sum(h > 0 for h in holders) >= 2  # and the sessions spread over the replicas


def test_the_routing_header_is_left_out_where_it_cannot_help() -> None:
    assert routed("meter-7") == ((SESSION_HEADER, "meter-7"),)
    assert routed("m" * 128) == ((SESSION_HEADER, "m" * 128),)
    # No session has such an id, or metadata cannot carry it: the call goes without it
    # and the server answers it (NOT_FOUND, INVALID_ARGUMENT) instead of the transport.
    for sid in ("", None, "m" * 129, "sensör-1", "tab\tid"):
        assert routed(sid) == ()


class _Ended(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_a_stream_reset_by_a_proxy_is_a_broken_stream_to_resend() -> None:
    """What Envoy hands a client whose replica went away mid-stream: resent by position.
    The server's own refusals keep their codes."""
    broken = [
        (grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2"),
        (grpc.StatusCode.CANCELLED, "CANCELLED"),
        (grpc.StatusCode.UNAVAILABLE, "upstream connect error"),
    ]
    for code, details in broken:
        assert isinstance(from_stream_error(_Ended(code, details)), UnavailableError), code
    kept = [
        (grpc.StatusCode.INTERNAL, "internal error (request id 3f9c0a1b2d4e)"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "too many open streams"),
        (grpc.StatusCode.INVALID_ARGUMENT, "undecodable request"),
    ]
    for code, details in kept:
        err = from_stream_error(_Ended(code, details))
        assert err.code == code and not isinstance(err, UnavailableError), code
