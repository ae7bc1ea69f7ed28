"""The Python clients: typed exceptions, array shapes, the asyncio session handle."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import grpc
import numpy as np
import pytest

from seqserve.client import (
    NO_RETRY,
    AsyncClient,
    Client,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    SeqServeClientError,
    UnavailableError,
)
from seqserve.client._common import error_for
from seqserve.grpc.status import STATUS_CODES, to_status
from tests.grpc.conftest import TOL, Zoo
from tests.grpc.harness import ServerThread


def test_every_core_error_arrives_as_its_own_typed_exception() -> None:
    classes = set()
    for core_error, code in STATUS_CODES.items():
        assert to_status(core_error("expected 1, got 2")) == (code, "expected 1, got 2")
        exc = error_for(code, "expected 1, got 2")
        assert type(exc) is not SeqServeClientError and exc.code == code
        assert exc.message == "expected 1, got 2" and str(exc) == f"{code.name}: expected 1, got 2"
        classes.add(type(exc))
    assert len(classes) == len(STATUS_CODES)
    other = error_for(grpc.StatusCode.PERMISSION_DENIED, "no")
    assert type(other) is SeqServeClientError and other.code == grpc.StatusCode.PERMISSION_DENIED


def test_no_server_is_unavailable() -> None:
    with Client("127.0.0.1:1") as client, pytest.raises(UnavailableError) as e:
        client.list_models()
    assert e.value.code == grpc.StatusCode.UNAVAILABLE

    async def run() -> None:
        async with AsyncClient("127.0.0.1:1") as client:
            await client.create_session("m")

    with pytest.raises(UnavailableError):
        asyncio.run(run())


def test_array_shapes(server: ServerThread, zoo: Zoo) -> None:
    x = np.array([[0.5, -1.0], [1.5, 0.25]], np.float32)  # (T, F) for gru-ar
    with Client(server.target) as client, client.session("gru-ar") as s:
        one = s.step(x[0])  # (F,) is one step
        assert one.shape == (1, 2)
        two = s.step(x[1:])
        assert two.shape == (1, 2)
        zoo.assert_matches("gru-ar", x, np.concatenate([one, two]))
        for wrong in (np.zeros((1, 1, 2)), np.zeros(3), np.zeros((2, 1)), 1.0, [[]]):
            with pytest.raises(InvalidArgumentError, match=r"expected \(2,\) for one step"):
                s.step(wrong)  # refused before anything is sent
        assert s.info().position == 2
        info = client.model_info("gru-ar")
        assert (info.input_size, info.output_size, info.cell) == (2, 2, "gru")
        assert [st.input_name for st in info.states] == ["h0"]
        assert info.states[0].shape == (1, -1, 12) and info.states[0].batch_axis == 1
        assert info.autoregressive and info.max_steps_per_request == 512
        assert '"cell": "gru"' in info.spec_json


def test_a_wrongly_shaped_input_is_never_read_as_other_steps(server: ServerThread) -> None:
    with Client(server.target) as client, client.session("lstm-ar") as s:  # one input
        with pytest.raises(InvalidArgumentError, match=r"got shape \(1, 2\)"):
            s.step([[315.0, 316.0]])  # one row of two values: not two steps
        with pytest.raises(InvalidArgumentError, match=r"got shape \(2,\)"):
            s.step([315.0, 316.0])  # a 1-D array is one step of F values
        with pytest.raises(InvalidArgumentError, match="expected numbers"):
            s.step("high")
        assert s.step(315.0).shape == (1, 1)  # a scalar is one step when F == 1
        assert s.step([[315.0], [316.0]]).shape == (2, 1)
        assert list(s.stream([[[1.0]], [[2.0], [3.0]]]))[1].shape == (2, 1)
        with pytest.raises(InvalidArgumentError, match=r"got shape \(1, 2\)"):
            list(s.stream([[[1.0, 2.0]]]))
        assert s.info().position == 6


def test_closing_never_hides_the_exception_that_ended_the_block(zoo: Zoo) -> None:
    from tests.grpc.conftest import settings_for

    server = ServerThread(settings_for(zoo.repository, grace_period_s=0.0)).__enter__()
    client = Client(server.target, timeout=2.0, retry=NO_RETRY)
    with pytest.raises(KeyError) as raised, client.session("lstm-ar"):
        server.stop()  # closing the session at the end of the block fails now
        raise KeyError("the caller's own error")
    assert any("closing session" in note for note in raised.value.__notes__)
    client.close()


def test_unary_calls_have_a_deadline() -> None:
    gate = threading.Event()

    def stuck(request: bytes, context: object) -> bytes:
        gate.wait(10)
        return b""

    handler = grpc.method_handlers_generic_handler(
        "seqserve.v1.Inference", {"ListModels": grpc.unary_unary_rpc_method_handler(stuck)}
    )
    stalled = grpc.server(concurrent.futures.ThreadPoolExecutor(2), handlers=[handler])
    port = stalled.add_insecure_port("127.0.0.1:0")
    stalled.start()
    try:
        assert Client(f"127.0.0.1:{port}").timeout == 30.0  # on by default
        with Client(f"127.0.0.1:{port}", timeout=0.3) as client:
            started = time.monotonic()
            with pytest.raises(DeadlineExceededError):
                client.list_models()
            assert time.monotonic() - started < 5
    finally:
        gate.set()
        stalled.stop(None)


def test_async_session_stream_batch_and_forecast(server: ServerThread, zoo: Zoo) -> None:
    rng = np.random.default_rng(21)
    x = zoo.inputs("rnn-ar", 30, rng)

    async def run() -> str:
        async with AsyncClient(server.target) as client, client.session("rnn-ar") as s:
            streamed = [y async for y in s.stream(np.array_split(x[:20], 6))]
            batch = await client.batch_step({s.id: x[20:25]})
            unary = await s.step(x[25:])
            got = np.concatenate([*streamed, batch.outputs[s.id], unary])
            zoo.assert_matches("rnn-ar", x, got)
            assert batch.positions[s.id] == 25 and (await s.info()).position == 30
            forecast = await s.forecast(10)
            np.testing.assert_allclose(forecast, zoo.rollout("rnn-ar", x, 10), rtol=TOL, atol=TOL)
            models = await client.list_models()
            assert {m.name for m in models} == set(zoo.modules)
            return s.id

    closed_id = asyncio.run(run())
    with Client(server.target) as client, pytest.raises(NotFoundError):
        client.get_session(closed_id)  # the async with block closed it


def test_wait_ready(server: ServerThread) -> None:
    with Client(server.target) as client:
        client.wait_ready(timeout=10)
        assert client.list_models()
    with Client("127.0.0.1:1") as client, pytest.raises(UnavailableError, match=r"after 0\.2 s"):
        client.wait_ready(timeout=0.2)
