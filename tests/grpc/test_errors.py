"""Every row of the error table over gRPC: the status code and a message naming expected vs got.

A refused request never changes the session: after each refusal the session
goes on and its outputs still equal PyTorch's on the steps it accepted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from seqserve.api import seqserve_pb2 as pb
from seqserve.api import seqserve_pb2_grpc as pb_grpc
from seqserve.client import (
    AlreadyExistsError,
    Client,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from tests.grpc.conftest import NOT_AUTOREGRESSIVE, TOL, Zoo
from tests.grpc.harness import ServerThread

GRU = "gru-ar"  # autoregressive, two inputs
X = np.array([[0.5, -1.0], [1.5, 0.25], [-0.75, 2.0]], np.float32)  # (T, F) for GRU


@pytest.fixture
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.target) as c:
        yield c


def assert_unchanged(
    client: Client, session_id: str, accepted: np.ndarray, model: str, zoo: Zoo
) -> None:
    """The session continues exactly from the steps it accepted."""
    probe = np.full((2, zoo.input_size(model)), 0.3, np.float32)  # (2, F)
    got = client.step(session_id, probe)
    want = zoo.forward(model, np.concatenate([accepted, probe]))[-2:]
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)


# -- NOT_FOUND ----------------------------------------------------------------------------------


def test_unknown_model_and_version(client: Client) -> None:
    with pytest.raises(NotFoundError) as e:
        client.create_session("no-such-model")
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert "'no-such-model'" in e.value.message and GRU in e.value.message  # names what exists
    with pytest.raises(NotFoundError) as e:
        client.create_session(GRU, version="7")
    assert "'7'" in e.value.message and "'1'" in e.value.message
    with pytest.raises(NotFoundError):
        client.model_info(GRU, "7")


def test_unknown_session_on_every_call(client: Client) -> None:
    calls = {
        "info": lambda: client.get_session("nope"),
        "reset": lambda: client.reset_session("nope"),
        "close": lambda: client.close_session("nope"),
        "step": lambda: client.step("nope", X),
        "forecast": lambda: client.forecast("nope", 3),
    }
    for name, call in calls.items():
        with pytest.raises(NotFoundError) as e:
            call()
        assert "'nope'" in e.value.message, name


# -- ALREADY_EXISTS -----------------------------------------------------------------------------


def test_creating_an_existing_id(client: Client, zoo: Zoo) -> None:
    client.create_session(GRU, session_id="sensor-17")
    client.step("sensor-17", X)
    with pytest.raises(AlreadyExistsError) as e:
        client.create_session("lstm-ar", session_id="sensor-17")
    assert "'sensor-17'" in e.value.message
    info = client.get_session("sensor-17")
    assert (info.model, info.position) == (GRU, 3)
    assert_unchanged(client, "sensor-17", X, GRU, zoo)
    client.close_session("sensor-17")


# -- INVALID_ARGUMENT ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "got"),
    [
        (np.arange(5, dtype=np.float32), "got 5"),  # not a multiple of input_size=2
        (np.zeros(0, np.float32), "got 0"),  # T == 0
        (np.array([1.0, np.nan], np.float32), "nan"),
        (np.array([np.inf, 1.0], np.float32), "inf"),
        (np.zeros(2 * 513, np.float32), "513"),  # the limit is 512 steps
    ],
    ids=["wrong-count", "t0", "nan", "inf", "too-many-steps"],
)
def test_bad_values_are_refused_and_change_nothing(
    client: Client, zoo: Zoo, values: np.ndarray, got: str
) -> None:
    sid = client.create_session(GRU).session_id
    client.step(sid, X)
    with pytest.raises(InvalidArgumentError) as e:
        client.step(sid, values)  # 1-D values go on the wire as they are
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    message = e.value.message.lower()
    assert "expected" in message and got in message, message
    assert client.get_session(sid).position == len(X)
    assert_unchanged(client, sid, X, GRU, zoo)


def test_forecast_horizon_must_be_in_range(client: Client) -> None:
    sid = client.create_session(GRU).session_id
    client.step(sid, X)
    for horizon in (0, 513):
        with pytest.raises(InvalidArgumentError) as e:
            client.forecast(sid, horizon)
        assert "expected" in e.value.message and f"got {horizon}" in e.value.message


# -- RESOURCE_EXHAUSTED -------------------------------------------------------------------------


def test_message_too_large(client: Client) -> None:
    sid = client.create_session(GRU).session_id
    big = np.zeros((40_000, 2), np.float32)  # ~320 kB > the server's 256 KiB
    with pytest.raises(ResourceExhaustedError) as e:
        client.step(sid, big)
    assert re.search(r"larger than max \(\d+ vs\. 262144\)", e.value.message), e.value.message
    assert client.get_session(sid).position == 0


# -- FAILED_PRECONDITION ------------------------------------------------------------------------


def test_out_of_order_position(client: Client, zoo: Zoo) -> None:
    sid = client.create_session(GRU).session_id
    first = client.step(sid, X, position=0)
    other = X + 1.0  # other values than the step applied at 0
    for wrong, values in ((0, other), (2, X), (4, X)):  # a conflict, a step lost, one ahead
        with pytest.raises(FailedPreconditionError) as e:
            client.step(sid, values, position=wrong)
        assert e.value.message.endswith(f"expected position 3, got {wrong}")
    # The same request again (a retry whose answer was lost): the same answer, not reapplied.
    np.testing.assert_array_equal(client.step(sid, X, position=0), first)
    assert client.get_session(sid).position == 3
    assert_unchanged(client, sid, X, GRU, zoo)


def test_forecast_needs_an_autoregressive_model(client: Client, zoo: Zoo) -> None:
    sid = client.create_session(NOT_AUTOREGRESSIVE).session_id
    client.step(sid, np.ones((2, zoo.input_size(NOT_AUTOREGRESSIVE)), np.float32))
    with pytest.raises(FailedPreconditionError) as e:
        client.forecast(sid, 4)
    assert "not autoregressive" in e.value.message
    assert client.get_session(sid).position == 2


# -- in-band errors on the stream and the batch call --------------------------------------------


def test_bad_item_on_a_multiplexed_stream_fails_alone(client: Client, zoo: Zoo) -> None:
    models = ("lstm-ar", GRU, "rnn-ar")
    ids = [client.create_session(m).session_id for m in models]
    rng = np.random.default_rng(3)
    good = {sid: zoo.inputs(m, 6, rng) for sid, m in zip(ids, models, strict=True)}
    bad = np.array([1.0, 2.0, 3.0], np.float32)  # 3 values: no model here takes 3 inputs
    sequence = []
    for t in range(3):
        for sid in ids:
            sequence.append((sid, bad if (sid, t) == (ids[1], 1) else good[sid][2 * t : 2 * t + 2]))
    results = list(client.step_stream(sequence))
    assert sorted(r.request_id for r in results) == list(range(len(sequence)))
    failed = [r for r in results if r.error is not None]
    assert [(r.session_id, r.request_id) for r in failed] == [(ids[1], 4)]
    error = failed[0].error
    assert isinstance(error, InvalidArgumentError)
    assert "expected" in error.message and "got 3" in error.message
    for sid, model in zip(ids, models, strict=True):
        ok = sorted(
            (r.request_id, r.outputs) for r in results if r.session_id == sid and r.error is None
        )
        accepted = good[sid] if sid != ids[1] else np.concatenate([good[sid][0:2], good[sid][4:6]])
        zoo.assert_matches(model, accepted, np.concatenate([o for _, o in ok]))


def test_a_refused_step_does_not_overtake_earlier_steps_of_its_session(
    client: Client, zoo: Zoo
) -> None:
    """A step refused at once is still answered after the session's earlier steps."""
    sid = client.create_session(GRU).session_id
    rng = np.random.default_rng(8)
    good = zoo.inputs(GRU, 40, rng)
    nan = np.array([np.nan, 0.0], np.float32)
    sequence = [(sid, good[i : i + 1] if i % 2 == 0 else nan) for i in range(40)]
    answers = list(client.step_stream(sequence))
    assert [r.request_id for r in answers] == list(range(40))
    assert [r.error is None for r in answers] == [i % 2 == 0 for i in range(40)]
    zoo.assert_matches(GRU, good[::2], np.concatenate([r.outputs for r in answers[::2]]))


def test_unknown_session_on_the_stream_is_in_band(client: Client) -> None:
    sid = client.create_session(GRU).session_id
    answers = list(client.step_stream([(sid, X), ("ghost", X), (sid, X)]))
    results = sorted(answers, key=lambda r: r.request_id)  # sessions may interleave any way
    assert [r.error is None for r in results] == [True, False, True]
    assert [r.request_id for r in answers if r.session_id == sid] == [0, 2]
    assert isinstance(results[1].error, NotFoundError)
    assert results[2].position == 6


def test_bad_items_in_a_batch_fail_alone(client: Client, zoo: Zoo) -> None:
    a = client.create_session(GRU).session_id
    b = client.create_session(GRU).session_id
    result = client.batch_step({a: X, b: np.array([[np.nan, 1.0]], np.float32), "ghost": X})
    assert set(result.outputs) == {a}
    assert isinstance(result.errors[b], InvalidArgumentError) and "nan" in result.errors[b].message
    assert isinstance(result.errors["ghost"], NotFoundError)
    zoo.assert_matches(GRU, X, result.outputs[a])
    assert client.get_session(b).position == 0


def test_a_batch_naming_a_session_twice_is_refused(client: Client) -> None:
    a = client.create_session(GRU).session_id
    request = pb.BatchStepRequest(session_ids=[a, a], values=[0.0] * 4)
    with grpc.insecure_channel(client.target) as channel, pytest.raises(grpc.RpcError) as e:
        pb_grpc.InferenceStub(channel).BatchStep(request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = e.value.details() or ""
    assert repr(a) in details and "expected" in details
    assert client.get_session(a).position == 0


# -- INTERNAL -----------------------------------------------------------------------------------


def test_unexpected_failure_is_internal_with_a_logged_request_id(
    server: ServerThread,
    client: Client,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert server.server is not None and server.server.sessions is not None

    def broken(*args: object) -> object:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.server.sessions, "info", broken)
    with (
        caplog.at_level(logging.ERROR, logger="seqserve.grpc.status"),
        pytest.raises(InternalError) as e,
    ):
        client.get_session("any")
    monkeypatch.undo()
    match = re.search(r"request id ([0-9a-f]{12})", e.value.message)
    assert match, e.value.message
    assert "a bug" not in e.value.message  # internals stay in the log
    logged = [r for r in caplog.records if match.group(1) in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert "a bug" in str(logged[0].exc_info[1])
    with pytest.raises(NotFoundError):  # the server goes on
        client.get_session("any")


def test_a_failed_model_call_reports_the_request_id_it_was_logged_under(
    server: ServerThread,
    client: Client,
    zoo: Zoo,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Steps failed by the model, on a stream and a unary call: each client sees the id of
    the one log line that holds the traceback, and nothing logs the failure twice."""
    assert server.server is not None
    model = server.server.sessions.model(GRU)

    def broken(*args: object) -> object:
        raise RuntimeError("injected model failure")

    ids = [client.create_session(GRU).session_id for _ in range(3)]
    with caplog.at_level(logging.ERROR):
        monkeypatch.setattr(model, "run", broken)
        streamed = list(client.step_stream((sid, X[:1]) for sid in ids))
        with pytest.raises(InternalError) as unary:
            client.step(ids[0], X)
        monkeypatch.undo()
    messages = [r.error.message for r in streamed if r.error is not None]
    messages.append(unary.value.message)
    assert len(messages) == 4
    assert all(f"model {GRU}/1: the model call failed (RuntimeError" in m for m in messages)
    request_ids = {re.findall(r"request id ([0-9a-f]{12})", m)[0] for m in messages}
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == len(request_ids)  # one line per failed model call, no echo
    for rid in request_ids:
        (line,) = [r for r in logged if rid in r.getMessage()]
        assert line.exc_info is not None and "injected" in str(line.exc_info[1])
    assert "injected" not in " ".join(messages)  # the exception's text stays in the log
    for sid in ids:  # the failed steps changed nothing; the sessions go on
        assert client.get_session(sid).position == 0
        assert_unchanged(client, sid, X[:0], GRU, zoo)
