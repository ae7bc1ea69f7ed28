"""Bearer tokens: every seqserve.v1 call needs one; health and reflection stay open;
a principal cannot see, step, reset, close, export or batch another's session."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqserve import cli
from seqserve.api import seqserve_pb2 as pb
from seqserve.api import seqserve_pb2_grpc as pb_grpc
from seqserve.client import Client, NotFoundError, SeqServeClientError
from seqserve.grpc.auth import TokenError, TokenTable, parse
from tests.grpc.conftest import Zoo, settings_for
from tests.grpc.harness import ServerThread

MODEL = "gru-ar"


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text("# token principal\nalice-secret alice\nbob-secret   bob\n")
    return path


@pytest.fixture
def running(zoo: Zoo, tokens: Path) -> Iterator[ServerThread]:
    with ServerThread(settings_for(zoo.repository, auth_tokens=str(tokens))) as server:
        yield server


def calls(stub: pb_grpc.InferenceStub) -> dict[str, Callable[[Any], object]]:
    """One call of every RPC of seqserve.v1.Inference, with the given metadata."""
    step = pb.StepRequest(session_id="s", values=[1.0, 1.0])
    return {
        "ListModels": lambda md: stub.ListModels(pb.ListModelsRequest(), metadata=md),
        "GetModel": lambda md: stub.GetModel(pb.GetModelRequest(name=MODEL), metadata=md),
        "CreateSession": lambda md: stub.CreateSession(
            pb.CreateSessionRequest(model=MODEL), metadata=md
        ),
        "GetSession": lambda md: stub.GetSession(pb.GetSessionRequest(session_id="s"), metadata=md),
        "ResetSession": lambda md: stub.ResetSession(
            pb.ResetSessionRequest(session_id="s"), metadata=md
        ),
        "CloseSession": lambda md: stub.CloseSession(
            pb.CloseSessionRequest(session_id="s"), metadata=md
        ),
        "Step": lambda md: stub.Step(step, metadata=md),
        "StepStream": lambda md: list(stub.StepStream(iter([step]), metadata=md)),
        "BatchStep": lambda md: stub.BatchStep(
            pb.BatchStepRequest(session_ids=["s"], values=[1.0, 1.0]), metadata=md
        ),
        "Forecast": lambda md: stub.Forecast(
            pb.ForecastRequest(session_id="s", horizon=1), metadata=md
        ),
        "ExportSession": lambda md: stub.ExportSession(
            pb.ExportSessionRequest(session_id="s"), metadata=md
        ),
        "ImportSession": lambda md: stub.ImportSession(pb.ImportSessionRequest(), metadata=md),
    }


def test_every_rpc_needs_a_known_bearer_token(running: ServerThread) -> None:
    with grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
        every = calls(stub)
        assert len(every) == len(pb.DESCRIPTOR.services_by_name["Inference"].methods)
        cases = {
            (): "got none",
            (("authorization", "Basic YWxpY2U="),): "another form",
            (("authorization", "Bearer nope"),): "not known",
        }
        for name, call in every.items():
            for metadata, says in cases.items():
                with pytest.raises(grpc.RpcError) as e:
                    call(metadata)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, (name, metadata)
                assert says in (e.value.details() or ""), name
        # With a known token every call reaches the server (its own errors, not UNAUTHENTICATED).
        for name, call in every.items():
            try:
                call((("authorization", "Bearer alice-secret"),))
            except grpc.RpcError as exc:
                assert exc.code() != grpc.StatusCode.UNAUTHENTICATED, name


def test_health_and_reflection_stay_open(running: ServerThread) -> None:
    with grpc.insecure_channel(running.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="seqserve.v1.Inference"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(running.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(stub.ServerReflectionInfo(iter([request])))
        names = {s.name for s in answer.list_services_response.service}
        assert "seqserve.v1.Inference" in names


def test_a_principal_cannot_reach_or_detect_another_principals_session(
    running: ServerThread,
) -> None:
    with (
        Client(running.target, token="alice-secret") as alice,
        Client(running.target, token="bob-secret") as bob,
    ):
        sid = alice.create_session(MODEL, session_id="alice-meter").session_id
        alice.step(sid, [1.0, 2.0])

        def unknown_message(call: Callable[[str], object]) -> tuple[str, str]:
            """What bob hears for alice's session, and for an id nobody has."""
            said = []
            for target in (sid, "nobody-has-this"):
                with pytest.raises(NotFoundError) as e:
                    call(target)
                said.append(e.value.message.replace(target, "ID"))
            return said[0], said[1]

        for name, call in {
            "get": bob.get_session,
            "step": lambda s: bob.step(s, [1.0, 2.0]),
            "reset": bob.reset_session,
            "close": bob.close_session,
            "export": bob.export_session,
            "forecast": lambda s: bob.forecast(s, 2),
        }.items():
            theirs, nobodys = unknown_message(call)
            assert theirs == nobodys, name  # the same words: bob cannot tell it exists
        # A batch's layout needs each item's input size, which an unknown session does not
        # have: items of a one-input model, so that bob's batch parses either way.
        one = alice.create_session("lstm-ar", session_id="alice-one").session_id
        result = bob.batch_step({one: [1.0], "nobody": [1.0]})
        assert set(result.errors) == {one, "nobody"} and not result.outputs
        theirs, nobodys = (result.errors[k] for k in (one, "nobody"))
        assert isinstance(theirs, NotFoundError)
        assert theirs.message.replace(one, "ID") == nobodys.message.replace("nobody", "ID")
        streamed = list(bob.step_stream([(sid, [1.0, 2.0])]))
        assert streamed[0].error is not None and "unknown session" in str(streamed[0].error)
        assert alice.get_session(sid).position == 1  # nothing bob did touched it


def test_the_tokens_file_is_read_again_when_it_changes_and_on_sighup(
    running: ServerThread, tokens: Path
) -> None:
    with Client(running.target, token="bob-secret") as bob:
        bob.list_models()
        tokens.write_text("alice-secret alice\ncarol-secret carol\n")
        os.utime(tokens, ns=(time.time_ns(), time.time_ns() + 10**9))  # a changed stamp
        time.sleep(1.2)  # the file is looked at once a second at most
        with pytest.raises(SeqServeClientError) as e:
            bob.list_models()
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    with Client(running.target, token="carol-secret") as carol:
        carol.list_models()
    tokens.write_text("this line has three fields\n")  # broken: the last good table stays
    assert running.server is not None
    running.server.reload_tokens()  # what SIGHUP calls
    with Client(running.target, token="carol-secret") as carol:
        carol.list_models()


def test_bad_tokens_files_are_refused_with_the_line(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match=r"f:2: expected TOKEN PRINCIPAL, got 1 fields"):
        parse("a alice\nlonely\n", "f")
    with pytest.raises(TokenError, match="token given twice"):
        parse("a alice\na bob\n", "f")
    with pytest.raises(TokenError, match="at least one"):
        parse("# nothing\n\n", "f")
    with pytest.raises(TokenError, match="cannot read the tokens file"):
        TokenTable(tmp_path / "missing")
    assert list(parse("x y # a comment\n", "f").values()) == ["y"]


def test_the_cli_takes_a_token(
    running: ServerThread, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["models", "--target", running.target]) != 0
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert cli.main(["models", "--target", running.target, "--token", "alice-secret"]) == 0
    assert MODEL in capsys.readouterr().out
    monkeypatch.setenv("SEQSERVE_TOKEN", "bob-secret")  # kept out of argv and shell history
    assert cli.main(["models", "--target", running.target]) == 0


def test_sessions_per_principal_are_capped(zoo: Zoo, tokens: Path) -> None:
    settings = settings_for(
        zoo.repository, auth_tokens=str(tokens), max_sessions_per_principal=2, session_ttl_s=1.0
    )
    with (
        ServerThread(settings) as server,
        Client(server.target, token="alice-secret") as alice,
        Client(server.target, token="bob-secret") as bob,
    ):
        first = alice.create_session(MODEL).session_id
        alice.create_session(MODEL)
        with pytest.raises(SeqServeClientError) as e:
            alice.create_session(MODEL)
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "principal 'alice': 2 open, max_sessions_per_principal=2" in e.value.message
        exported = alice.export_session(first)
        with pytest.raises(SeqServeClientError) as e:  # an import is a new session too
            alice.import_session(exported, session_id="copy")
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        for _ in range(2):  # another principal's quota is its own
            bob.create_session(MODEL)
        alice.close_session(first)
        alice.create_session(MODEL)  # a closed session frees its place
        time.sleep(1.3)  # and so does one idle past the TTL
        alice.create_session(MODEL)
