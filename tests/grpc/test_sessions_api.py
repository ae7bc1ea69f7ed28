"""Session lifecycle over gRPC: create, reset, close, TTL eviction, the cap, forecast."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import numpy as np
import pytest

from seqserve.client import Client, NotFoundError, ResourceExhaustedError
from tests.grpc.conftest import TOL, Zoo, settings_for
from tests.grpc.harness import ServerThread

MODEL = "lstm-ar"


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.target) as c:
        yield c


def test_minted_ids_are_128_bit_and_distinct(client: Client) -> None:
    ids = {client.create_session(MODEL).session_id for _ in range(20)}
    assert len(ids) == 20
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_info_reports_model_position_and_ttl(client: Client, zoo: Zoo) -> None:
    rng = np.random.default_rng(0)
    info = client.create_session(MODEL, version="1", session_id="meter-9")
    assert (info.session_id, info.model, info.version, info.position) == ("meter-9", MODEL, "1", 0)
    client.step("meter-9", zoo.inputs(MODEL, 5, rng))
    info = client.get_session("meter-9")
    assert info.position == 5 and info.ttl_seconds == 900.0 and 0 <= info.idle_seconds < 900
    client.close_session("meter-9")


def test_reset_starts_over_from_the_zero_state(client: Client, zoo: Zoo) -> None:
    rng = np.random.default_rng(1)
    with client.session(MODEL) as s:
        s.step(zoo.inputs(MODEL, 7, rng))
        assert s.reset().position == 0
        x = zoo.inputs(MODEL, 9, rng)
        zoo.assert_matches(MODEL, x, s.step(x))
        assert s.info().position == 9


def test_close_ends_the_session(client: Client, zoo: Zoo) -> None:
    rng = np.random.default_rng(2)
    with client.session(MODEL) as s:
        s.step(zoo.inputs(MODEL, 4, rng))
        assert s.close() == 4
        with pytest.raises(NotFoundError):
            s.step(zoo.inputs(MODEL, 1, rng))
    # the with block closed nothing twice; a session left open is closed on exit
    with client.session(MODEL) as kept:
        pass
    with pytest.raises(NotFoundError):
        client.get_session(kept.id)


@pytest.mark.parametrize("model", ["lstm-ar", "gru-ar", "rnn-ar"])
def test_forecast_matches_the_pytorch_rollout_and_leaves_the_session(
    client: Client, zoo: Zoo, model: str
) -> None:
    rng = np.random.default_rng(3)
    history, later = zoo.inputs(model, 40, rng), zoo.inputs(model, 5, rng)
    with client.session(model) as s:
        for chunk in np.array_split(history, 4):
            s.step(chunk)
        got = s.forecast(25)
        np.testing.assert_allclose(got, zoo.rollout(model, history, 25), rtol=TOL, atol=TOL)
        assert s.info().position == 40
        again = s.forecast(25)
        np.testing.assert_array_equal(again, got)
        # the state is untouched: the next steps continue the history
        want = zoo.forward(model, np.concatenate([history, later]))[40:]
        np.testing.assert_allclose(s.step(later), want, rtol=TOL, atol=TOL)


def test_idle_sessions_expire_and_active_ones_stay(zoo: Zoo) -> None:
    rng = np.random.default_rng(4)
    x = zoo.inputs(MODEL, 1, rng)
    settings = settings_for(zoo.repository, session_ttl_s=0.5)
    with ServerThread(settings) as server, Client(server.target) as client:
        created = time.monotonic()
        idle = client.create_session(MODEL).session_id
        busy = client.create_session(MODEL).session_id
        assert client.get_session(idle).ttl_seconds == 0.5
        steps = 0
        while True:
            client.step(busy, x)  # a step every ~50 ms keeps `busy` alive
            steps += 1
            try:
                client.get_session(idle)  # looking does not count as activity
            except NotFoundError as exc:
                message = exc.message
                break
            assert time.monotonic() - created < 30, "the idle session never expired"
            time.sleep(0.05)
        assert time.monotonic() - created >= 0.5  # not before its TTL
        assert repr(idle) in message and "expired after 0.5 s idle" in message
        assert client.get_session(busy).position == steps
        with pytest.raises(NotFoundError):
            client.step(idle, x)


def test_session_cap(zoo: Zoo) -> None:
    with (
        ServerThread(settings_for(zoo.repository, max_sessions=3)) as server,
        Client(server.target) as client,
    ):
        ids = [client.create_session(MODEL).session_id for _ in range(3)]
        with pytest.raises(ResourceExhaustedError) as e:
            client.create_session("gru-ar")
        assert "too many sessions" in e.value.message and "max_sessions=3" in e.value.message
        client.close_session(ids[0])
        client.create_session("gru-ar")  # room again
        with pytest.raises(ResourceExhaustedError):
            client.create_session(MODEL)
