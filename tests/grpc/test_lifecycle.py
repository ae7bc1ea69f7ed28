"""Server lifecycle: health, reflection, graceful shutdown (in process and by SIGTERM)."""

from __future__ import annotations

import asyncio
import collections
import queue
import socket
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from seqserve import cli
from seqserve.api import seqserve_pb2 as pb
from seqserve.api import seqserve_pb2_grpc as pb_grpc
from seqserve.client import Client, UnavailableError
from tests.grpc.conftest import Zoo, settings_for
from tests.grpc.harness import ServerProcess, ServerThread, settled_position

SERVICE = "seqserve.v1.Inference"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_reflection_lists_the_service_and_its_methods(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {SERVICE, "grpc.health.v1.Health"} <= services
        from google.protobuf.descriptor_pool import DescriptorPool

        found = DescriptorPool(db).FindServiceByName(SERVICE)
        expected = pb.DESCRIPTOR.services_by_name["Inference"]
        assert [m.name for m in found.methods] == [m.name for m in expected.methods]
        assert found.FindMethodByName("StepStream").client_streaming


def test_health_goes_not_serving_on_shutdown_and_steps_then_fail(zoo: Zoo) -> None:
    with (
        ServerThread(settings_for(zoo.repository, grace_period_s=5.0)) as server,
        grpc.insecure_channel(server.target) as channel,
        Client(server.target) as client,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        assert next(watch).status == SERVING
        sid = client.create_session("gru-ar").session_id
        x = np.ones((2, 2), np.float32)

        # An open stream: one step answered before the shutdown, then the stream is ended.
        requests: queue.Queue[pb.StepRequest | None] = queue.Queue()
        stream = pb_grpc.InferenceStub(channel).StepStream(iter(requests.get, None))
        requests.put(pb.StepRequest(session_id=sid, values=x.ravel().tolist(), request_id=1))
        first = next(stream)
        assert first.request_id == 1 and not first.HasField("error")

        done = server.begin_shutdown()
        assert next(watch).status == NOT_SERVING
        watch.cancel()
        later = [
            pb.StepRequest(session_id=sid, values=x.ravel().tolist(), request_id=i) for i in (2, 3)
        ]
        for request in later:
            requests.put(request)
        answers: list[pb.StepResponse] = []
        with pytest.raises(grpc.RpcError) as ended:
            for response in stream:
                answers.append(response)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        # steps that arrived while shutting down were answered UNAVAILABLE in-band, if at all
        assert all(a.error.code == grpc.StatusCode.UNAVAILABLE.value[0] for a in answers)
        requests.put(None)
        done.result(timeout=10)
        with pytest.raises(UnavailableError):
            client.step(sid, x)


def test_sigterm_drains_in_flight_steps_and_exits_0(zoo: Zoo) -> None:
    grace = 8.0
    # A long batch delay holds the steps in the server's queue while SIGTERM arrives.
    with (
        ServerProcess(
            "--repository",
            str(zoo.repository),
            "--batch-delay-us",
            "1500000",
            "--grace-period",
            str(grace),
        ) as proc,
        Client(proc.target) as client,
    ):
        rng = np.random.default_rng(9)
        plans = {}
        for model in ("lstm-ar", "gru-ar", "rnn-ar"):
            sid = client.create_session(model).session_id
            plans[sid] = (model, zoo.inputs(model, 6, rng))
        results: dict[str, np.ndarray] = {}
        errors: list[BaseException] = []

        def step(sid: str, x: np.ndarray) -> None:
            try:
                results[sid] = client.step(sid, x)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=step, args=(sid, x)) for sid, (_, x) in plans.items()]
        for t in threads:
            t.start()
        time.sleep(0.5)  # the steps reach the server and wait out the batch delay
        proc.terminate()
        signalled = time.monotonic()
        for t in threads:
            t.join(timeout=grace + 5)
        code = proc.wait(timeout=grace + 5)
        elapsed = time.monotonic() - signalled
    assert not errors, errors
    for sid, (model, x) in plans.items():
        zoo.assert_matches(model, x, results[sid])
    assert code == 0, "".join(proc.log)
    assert elapsed < grace
    log = "".join(proc.log)
    assert "shutting down" in log and "seqserve stopped" in log


def test_a_cancelled_stream_leaves_its_session_consistent(server: ServerThread, zoo: Zoo) -> None:
    """Steps applied before the cancel count; the session continues from exactly those."""
    rng = np.random.default_rng(10)
    x = zoo.inputs("gru-ar", 400, rng)
    with Client(server.target) as client:
        sid = client.create_session("gru-ar").session_id
        results = client.step_stream((sid, x[i : i + 1]) for i in range(400))
        for _ in range(5):
            next(results)
        results.close()  # cancels the call with steps still in flight
        # The cancel reaches the server asynchronously: a step already in a
        # model call when it lands still completes. Wait for the position to settle.
        position = settled_position(client, sid)
        assert 5 <= position <= 400
        later = zoo.inputs("gru-ar", 3, rng)
        got = client.step(sid, later, position=position)
        want = zoo.forward("gru-ar", np.concatenate([x[:position], later]))[position:]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_serve_exits_1_when_it_cannot_start(
    zoo: Zoo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert cli.main(["serve", "--repository", str(tmp_path), "--address", "127.0.0.1:0"]) == 1
    assert "holds no models" in caplog.text
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["serve", "--repository", str(zoo.repository), "--address", f"127.0.0.1:{port}"]
        assert cli.main(argv) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text


def test_sigterm_answers_every_unary_call_it_received_and_cancels_none(zoo: Zoo) -> None:
    """100 clients each keep one unary Step in flight, the next sent as the last is
    answered, until SIGTERM. Every call the server received is answered (OK) or refused
    with UNAVAILABLE, which a client may retry elsewhere; none ends CANCELLED, which it
    could not: grpc's own stop cancels calls received and not yet handed to a handler."""

    async def drive(target: str, proc: ServerProcess) -> collections.Counter[str]:
        codes: collections.Counter[str] = collections.Counter()
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.InferenceStub(channel)
            sessions = [
                (await stub.CreateSession(pb.CreateSessionRequest(model="gru-ar"))).session_id
                for _ in range(100)
            ]

            async def client(sid: str) -> None:
                while True:
                    try:
                        await stub.Step(
                            pb.StepRequest(session_id=sid, values=[0.5, 1.0]), timeout=30
                        )
                        codes["OK"] += 1
                    except grpc.aio.AioRpcError as e:
                        codes[e.code().name] += 1
                        return  # UNAVAILABLE: this server is going; anything else: a failure

            tasks = [asyncio.create_task(client(sid)) for sid in sessions]
            while codes["OK"] < 1000:
                await asyncio.sleep(0.02)
            proc.terminate()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
        return codes

    with ServerProcess("--repository", str(zoo.repository), "--grace-period", "5") as proc:
        codes = asyncio.run(drive(proc.target, proc))
        assert proc.wait(timeout=10) == 0, "".join(proc.log)
    assert codes["UNAVAILABLE"] == 100, codes  # every client's last call, refused
    assert set(codes) == {"OK", "UNAVAILABLE"}, codes
