"""The KServe v2 front end, driven by tritonclient 2.73 (in a process of its own, see
triton_driver.py): its messages are tritonclient's, sequences give PyTorch's answers
over the sync stream, the asyncio stream and unary calls, and Triton's rules hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqserve.api import inference_pb2 as kpb
from seqserve.api import inference_pb2_grpc as kpb_grpc
from seqserve.client import Client, NotFoundError
from tests.grpc.conftest import TOL, Zoo, settings_for
from tests.grpc.descriptors import describe_files
from tests.grpc.harness import ServerThread

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("triton_driver.py")
MODEL = "gru-ar"  # 2 inputs, 2 outputs


def drive(plan: dict[str, Any]) -> Any:
    """Run tritonclient on a plan in its own process; what it printed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(DRIVER)],
        input=json.dumps(plan),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def server(zoo: Zoo) -> Iterator[ServerThread]:
    with ServerThread(settings_for(zoo.repository)) as running:
        yield running


def request(rid: str, model: str, x: np.ndarray, **more: Any) -> dict[str, Any]:
    """A tritonclient request of x (T, F) as [1, T, F]."""
    return {"id": rid, "model": model, "values": x.tolist(), "shape": [1, *x.shape], **more}


def sequences(
    zoo: Zoo, ids: list[int | str], model: str, chunks: list[int], seed: int
) -> tuple[list[dict[str, Any]], dict[int | str, np.ndarray]]:
    """Requests of several sequences interleaved chunk by chunk: START on the first, END on
    the last; and each sequence's whole input (N, F)."""
    rng = np.random.default_rng(seed)
    xs = {sid: zoo.inputs(model, sum(chunks), rng) for sid in ids}
    plan = []
    for k, t in enumerate(chunks):
        at = sum(chunks[:k])
        for sid in ids:
            plan.append(
                request(f"{sid}-{k}", model, xs[sid][at : at + t], sequence_id=sid,
                        start=k == 0, end=k == len(chunks) - 1)
            )  # fmt: skip
    return plan, xs


def check_sequences(
    zoo: Zoo, model: str, answers: list[dict[str, Any]], xs: dict[int | str, np.ndarray]
) -> None:
    """Every answer is PyTorch's on its sequence, and a sequence's answers arrive in order."""
    assert not [a for a in answers if "error" in a], answers
    by_sequence: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for a in answers:
        sid, k = a["id"].rsplit("-", 1)
        by_sequence.setdefault(sid, []).append((int(k), a))
    assert set(by_sequence) == {str(s) for s in xs}
    for sid, x in xs.items():
        got = by_sequence[str(sid)]
        assert [k for k, _ in got] == sorted(k for k, _ in got)  # in its order
        out = np.concatenate(
            [np.reshape(a["outputs"], a["shape"])[0] for _, a in got]
        )  # (N, O) from chunks of [1, T, O]
        assert all(a["datatype"] == "FP32" for _, a in got)
        np.testing.assert_allclose(out, zoo.forward(model, x), rtol=TOL, atol=TOL)


def test_the_messages_are_tritonclients() -> None:
    ours = describe_files([kpb.DESCRIPTOR])
    theirs = drive({"mode": "describe"})
    assert set(ours["services"]["inference.GRPCInferenceService"]) == {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
        "ModelConfig", "ModelInfer", "ModelStreamInfer",
    }  # fmt: skip
    for service, methods in ours["services"].items():
        for name, method in methods.items():
            assert theirs["services"][service][name] == method, (service, name)
    compared = 0
    for message, fields in ours["messages"].items():
        assert message in theirs["messages"], message
        for name, field in fields.items():
            assert theirs["messages"][message].get(name) == field, (message, name)
            compared += 1
    for enum, values in ours["enums"].items():
        for name, number in values.items():
            assert theirs["enums"][enum][name] == number, (enum, name)
    assert compared > 100  # every field of every message defined here


def test_interleaved_sequences_over_the_sync_stream(server: ServerThread, zoo: Zoo) -> None:
    plan, xs = sequences(zoo, [1, 2, "meter-a"], MODEL, [1, 3, 1, 2, 1], seed=1)
    answers = drive({"mode": "stream", "target": server.target, "requests": plan})["answers"]
    check_sequences(zoo, MODEL, answers, xs)


def test_interleaved_sequences_over_the_asyncio_stream(server: ServerThread, zoo: Zoo) -> None:
    plan, xs = sequences(zoo, [11, 12, 13, 14], "lstm-ar", [2, 1, 1, 4, 1, 1], seed=2)
    answers = drive({"mode": "astream", "target": server.target, "requests": plan})["answers"]
    check_sequences(zoo, "lstm-ar", answers, xs)


def test_unary_infer_sequences_and_stateless_calls(server: ServerThread, zoo: Zoo) -> None:
    plan, xs = sequences(zoo, [21, 22], MODEL, [2, 1, 3], seed=3)
    x = zoo.inputs(MODEL, 4, np.random.default_rng(4))
    plan += [
        request("stateless-0", MODEL, x),  # no sequence: the zero state, nothing kept
        request("after-end-0", MODEL, x[:1], sequence_id=21),  # 21 has ended
    ]
    answers = drive({"mode": "unary", "target": server.target, "requests": plan})["answers"]
    *seq, stateless, after_end = answers
    check_sequences(zoo, MODEL, seq, xs)
    got = np.reshape(stateless["outputs"], stateless["shape"])
    np.testing.assert_allclose(got[0], zoo.forward(MODEL, x), rtol=TOL, atol=TOL)
    assert after_end["status"] == "StatusCode.INVALID_ARGUMENT"
    assert after_end["error"] == (
        f"inference request for sequence 21 to model '{MODEL}' must specify the START flag "
        "on the first request of the sequence"
    )
    with Client(server.target) as native, pytest.raises(NotFoundError):
        native.get_session(f"oip/anonymous/{MODEL}/22")  # a session, closed by its END


def test_bad_requests_are_answered_in_band_and_the_stream_goes_on(
    server: ServerThread, zoo: Zoo
) -> None:
    x = zoo.inputs(MODEL, 4, np.random.default_rng(5))
    plan = [
        request("5-0", MODEL, x[:1], sequence_id=5, start=True),
        request("5-bad-type", MODEL, x[1:2], sequence_id=5, datatype="FP64"),
        {**request("5-bad-shape", MODEL, x[1:2], sequence_id=5), "shape": [1, 2, 1],
         "values": [[[1.0], [2.0]]]},
        request("5-bad-output", MODEL, x[1:2], sequence_id=5, outputs=["z"]),
        request("6-no-start", MODEL, x[1:2], sequence_id=6),
        request("5-1", MODEL, x[1:3], sequence_id=5, outputs=["y"]),  # asked for by name
        request("5-2", MODEL, x[3:4], sequence_id=5, end=True),
    ]  # fmt: skip
    answers = drive({"mode": "stream", "target": server.target, "requests": plan})["answers"]
    errors = [a["error"] for a in answers if "error" in a]
    assert len(errors) == 4
    assert any("expected datatype FP32 for input 'x', got 'FP64'" in e for e in errors)
    assert any("expected shape [1, T, 2] or [T, 2]" in e and "got [1, 2, 1]" in e for e in errors)
    assert any("unexpected inference output 'z'" in e for e in errors)
    assert any("sequence 6 to model" in e and "START flag" in e for e in errors)
    ok = [a for a in answers if "error" not in a]
    check_sequences(zoo, MODEL, ok, {5: x})  # the refused requests applied nothing


def test_start_on_a_live_sequence_starts_it_again(server: ServerThread, zoo: Zoo) -> None:
    rng = np.random.default_rng(12)
    old, new = zoo.inputs(MODEL, 3, rng), zoo.inputs(MODEL, 2, rng)
    plan = [
        request("o-0", MODEL, old, sequence_id=51, start=True),
        request("n-0", MODEL, new[:1], sequence_id=51, start=True),  # the old one ends here
        request("n-1", MODEL, new[1:], sequence_id=51, end=True),
    ]
    answers = drive({"mode": "stream", "target": server.target, "requests": plan})["answers"]
    by_id = {a["id"]: np.reshape(a["outputs"], a["shape"])[0] for a in answers}
    np.testing.assert_allclose(by_id["o-0"], zoo.forward(MODEL, old), rtol=TOL, atol=TOL)
    restarted = np.concatenate([by_id["n-0"], by_id["n-1"]])  # from the zero state again
    np.testing.assert_allclose(restarted, zoo.forward(MODEL, new), rtol=TOL, atol=TOL)


def test_triton_rules_for_ids_inputs_and_unserved_methods(server: ServerThread, zoo: Zoo) -> None:
    x = zoo.inputs(MODEL, 2, np.random.default_rng(6))
    with grpc.insecure_channel(server.target) as channel:
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)

        def infer(start: bool | None = None, seq: int | None = None, **tensor: Any) -> Any:
            r = kpb.ModelInferRequest(model_name=MODEL, id="r")
            t = r.inputs.add(name="x", datatype="FP32", shape=tensor.get("shape", [2, 2]))
            if "fp32" in tensor:
                t.contents.fp32_contents.extend(tensor["fp32"])
            if "raw" in tensor:
                r.raw_input_contents.append(tensor["raw"])
            if start is not None:
                r.parameters["sequence_start"].bool_param = start
            if seq is not None:
                r.parameters["sequence_id"].uint64_param = seq
            return stub.ModelInfer(r)

        with pytest.raises(grpc.RpcError) as e:  # flags but no id: Triton's words
            infer(start=True, fp32=x.ravel().tolist())
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert e.value.details() == (
            f"inference request to model '{MODEL}' must specify a non-zero or non-empty "
            "correlation ID"
        )
        # Typed contents, [T, F] shape, a uint64 id above int64's range: all accepted.
        got = infer(start=True, seq=2**64 - 1, fp32=x.ravel().tolist())
        assert list(got.outputs[0].shape) == [2, 2] and got.id == "r"
        y = np.frombuffer(got.raw_output_contents[0], "<f4").reshape(2, 2)
        np.testing.assert_allclose(y, zoo.forward(MODEL, x), rtol=TOL, atol=TOL)
        with Client(server.target) as native:
            info = native.get_session(f"oip/anonymous/{MODEL}/{2**64 - 1}")
            assert info.position == 2
        for tensor, says in [
            ({"raw": x.tobytes()[:12]}, "expected 16 bytes (4 FP32 values of shape [2, 2])"),
            ({"fp32": [1.0]}, "expected 4 values in contents.fp32_contents"),
            ({"fp32": [1.0] * 4, "raw": x.tobytes()}, "got both"),
            ({}, "got neither"),
        ]:
            with pytest.raises(grpc.RpcError) as e:
                infer(**tensor)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert says in (e.value.details() or ""), tensor
        with pytest.raises(grpc.RpcError) as e:  # a refused START starts nothing
            infer(start=True, seq=77, raw=x.tobytes()[:12])
        with Client(server.target) as native, pytest.raises(NotFoundError):
            native.get_session(f"oip/anonymous/{MODEL}/77")
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(kpb.ModelInferRequest(model_name="no-such-model"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        # What seqserve does not serve: UNIMPLEMENTED, as for any unknown method.
        index = channel.unary_unary("/inference.GRPCInferenceService/RepositoryIndex")
        with pytest.raises(grpc.RpcError) as e:
            index(b"")
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_an_idle_sequence_expires_with_the_session_ttl(zoo: Zoo) -> None:
    x = zoo.inputs(MODEL, 2, np.random.default_rng(7))
    with ServerThread(settings_for(zoo.repository, session_ttl_s=0.5)) as server:
        plan = [
            request("31-0", MODEL, x[:1], sequence_id=31, start=True),
            request("31-1", MODEL, x[1:], sequence_id=31, sleep=1.2),  # idle past the TTL
        ]
        answers = drive({"mode": "stream", "target": server.target, "requests": plan})
        first, second = answers["answers"]
        assert "error" not in first
        assert "sequence 31" in second["error"] and "START flag" in second["error"]
        config = drive({"mode": "info", "target": server.target, "model": MODEL})["config"]
        batching = config["config"]["sequence_batching"]
        assert int(batching["max_sequence_idle_microseconds"]) == 500_000


def test_discovery_as_tritonclient_reads_it(server: ServerThread, zoo: Zoo) -> None:
    got = drive({"mode": "info", "target": server.target, "model": "lstm-ar"})
    assert got["live"] and got["ready"] and got["model_ready"] and not got["unknown_ready"]
    assert got["server"]["name"] == "seqserve" and "sequence" in got["server"]["extensions"]
    meta = got["metadata"]
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "-1", "1"]}]
    config = got["config"]["config"]
    assert config["max_batch_size"] == 1024
    states = config["sequence_batching"]["state"]  # the LSTM's h and c, (layers, H) each
    assert len(states) == 2
    assert all(s["initial_state"][0]["zero_data"] for s in states)
    assert {tuple(int(d) for d in s["dims"]) for s in states} == {(2, 16)}


def test_native_and_kserve_calls_on_one_server_at_once(server: ServerThread, zoo: Zoo) -> None:
    native_x = zoo.inputs(MODEL, 40, np.random.default_rng(8))
    native_out: list[np.ndarray] = []

    def native() -> None:
        with Client(server.target) as client, client.session(MODEL) as s:
            native_out.extend(s.stream(native_x[i : i + 1] for i in range(len(native_x))))

    thread = threading.Thread(target=native)
    thread.start()
    plan, xs = sequences(zoo, [41, 42], MODEL, [1] * 20, seed=9)
    answers = drive({"mode": "stream", "target": server.target, "requests": plan})["answers"]
    thread.join(60)
    check_sequences(zoo, MODEL, answers, xs)
    np.testing.assert_allclose(
        np.concatenate(native_out), zoo.forward(MODEL, native_x), rtol=TOL, atol=TOL
    )
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "seqserve.v1.Inference", "inference.GRPCInferenceService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(stub.ServerReflectionInfo(iter([ask])))
        names = {s.name for s in answer.list_services_response.service}
        assert {"seqserve.v1.Inference", "inference.GRPCInferenceService"} <= names


def test_a_separate_kserve_port_and_sequences_per_principal(zoo: Zoo, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alice-secret alice\nbob-secret bob\n")
    settings = settings_for(zoo.repository, auth_tokens=str(tokens), kserve_address="127.0.0.1:0")
    with ServerThread(settings) as server:
        assert server.server is not None and server.server.kserve_port
        target = f"127.0.0.1:{server.server.kserve_port}"
        x = zoo.inputs(MODEL, 3, np.random.default_rng(10))
        y = zoo.inputs(MODEL, 3, np.random.default_rng(11))
        for token, data in (("alice-secret", x), ("bob-secret", y)):  # both use sequence 1
            plan = [request(f"1-{k}", MODEL, data[k : k + 1], sequence_id=1, start=k == 0)
                    for k in range(3)]  # fmt: skip
            answers = drive({"mode": "unary", "target": target, "requests": plan, "token": token})
            check_sequences(zoo, MODEL, answers["answers"], {1: data})
        with Client(server.target, token="alice-secret") as alice:
            assert alice.get_session(f"oip/alice/{MODEL}/1").position == 3
        anonymous = drive({"mode": "unary", "target": target, "requests": [
            request("1-3", MODEL, x[:1], sequence_id=1)]})["answers"][0]  # fmt: skip
        assert anonymous["status"] == "StatusCode.UNAUTHENTICATED"
        with grpc.insecure_channel(target) as channel:  # that port serves KServe only
            native = channel.unary_unary("/seqserve.v1.Inference/ListModels")
            with pytest.raises(grpc.RpcError) as e:
                native(b"", metadata=(("authorization", "Bearer alice-secret"),))
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
