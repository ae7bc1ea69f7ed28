"""TLS and mTLS on the gRPC port, with certificates made here: clients must verify the
server, under mTLS the client certificate names the principal, the plaintext health
port serves probes, and renewed certificates are used without a restart."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqserve import cli
from seqserve.bench.certs import Authority, Pair
from seqserve.client import TLS, Client, NotFoundError, SeqServeClientError, UnavailableError
from seqserve.grpc.tls import TlsError, TlsFiles
from tests.grpc.conftest import Zoo, settings_for
from tests.grpc.harness import ServerThread

MODEL = "gru-ar"
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Certs:
    ca: Authority
    server: Pair
    alice: Pair
    bob: Pair
    stranger: Pair  # signed by another CA


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("certs")
    ca = Authority(folder)
    other = Authority(folder / "other", "another CA")
    return Certs(
        ca=ca,
        server=ca.issue("server", "seqserve", server=True),
        alice=ca.issue("alice", "alice", server=False),
        bob=ca.issue("bob", "bob", server=False),
        stranger=other.issue("stranger", "alice", server=False),
    )


def tls_settings(zoo: Zoo, certs: Certs, *, mutual: bool, **more: object) -> object:
    return settings_for(
        zoo.repository,
        tls_cert=str(certs.server.cert),
        tls_key=str(certs.server.key),
        tls_client_ca=str(certs.ca.cert) if mutual else "",
        **more,
    )


@pytest.fixture(scope="module")
def tls_server(zoo: Zoo, certs: Certs) -> Iterator[ServerThread]:
    with ServerThread(tls_settings(zoo, certs, mutual=False)) as server:  # type: ignore[arg-type]
        yield server


@pytest.fixture(scope="module")
def mtls_server(zoo: Zoo, certs: Certs) -> Iterator[ServerThread]:
    settings = tls_settings(zoo, certs, mutual=True, health_address="127.0.0.1:0")
    with ServerThread(settings) as server:  # type: ignore[arg-type]
        yield server


def as_user(certs: Certs, pair: Pair) -> TLS:
    return TLS(ca=certs.ca.cert, cert=pair.cert, key=pair.key)


def test_tls_serves_clients_that_trust_its_ca_and_matches_the_model(
    tls_server: ServerThread, certs: Certs, zoo: Zoo
) -> None:
    x = zoo.inputs(MODEL, 6, np.random.default_rng(3))
    with (
        Client(tls_server.target, tls=TLS(ca=certs.ca.cert), timeout=10) as client,
        client.session(MODEL) as s,
    ):
        got = s.step(x)
    zoo.assert_matches(MODEL, x, got)


def test_tls_refuses_plaintext_and_unverified_clients(
    tls_server: ServerThread, certs: Certs
) -> None:
    with Client(tls_server.target, timeout=5) as plain, pytest.raises(UnavailableError):
        plain.list_models()
    # The system's roots do not know the test CA: the server is not trusted.
    with Client(tls_server.target, tls=True, timeout=5) as client, pytest.raises(UnavailableError):
        client.list_models()
    # A name the certificate does not carry is refused too.
    wrong = TLS(ca=certs.ca.cert, server_name="elsewhere.example")
    with Client(tls_server.target, tls=wrong, timeout=5) as client, pytest.raises(UnavailableError):
        client.list_models()


def test_mtls_needs_a_client_certificate_from_its_ca(
    mtls_server: ServerThread, certs: Certs
) -> None:
    for tls in (TLS(ca=certs.ca.cert), as_user(certs, certs.stranger)):  # none; another CA's
        refused = Client(mtls_server.target, tls=tls, timeout=5)
        with refused, pytest.raises(UnavailableError):
            refused.list_models()
    with Client(mtls_server.target, tls=as_user(certs, certs.alice), timeout=5) as alice:
        assert MODEL in {m.name for m in alice.list_models()}


def test_mtls_the_certificate_subject_owns_the_session(
    mtls_server: ServerThread, certs: Certs
) -> None:
    with (
        Client(mtls_server.target, tls=as_user(certs, certs.alice), timeout=10) as alice,
        Client(mtls_server.target, tls=as_user(certs, certs.bob), timeout=10) as bob,
    ):
        sid = alice.create_session(MODEL, session_id="alice-cert").session_id
        alice.step(sid, [1.0, 2.0])
        with pytest.raises(NotFoundError) as theirs:
            bob.step(sid, [1.0, 2.0])
        with pytest.raises(NotFoundError) as nobodys:
            bob.step("no-such-session", [1.0, 2.0])
        assert theirs.value.message.replace(sid, "ID") == nobodys.value.message.replace(
            "no-such-session", "ID"
        )
        assert alice.get_session(sid).position == 1
    assert mtls_server.server is not None
    record = mtls_server.server.sessions.directory.get(sid)
    assert record is not None and record[1] == "alice"  # the certificate's common name


def test_the_plaintext_health_port_answers_probes_under_mtls(
    mtls_server: ServerThread, certs: Certs
) -> None:
    server = mtls_server.server
    assert server is not None and server.health_port
    health_target = f"127.0.0.1:{server.health_port}"
    with grpc.insecure_channel(health_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "seqserve.v1.Inference"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # Only health is there: the inference service is not reachable without TLS.
        with Client(health_target, timeout=5) as plain:
            with pytest.raises(SeqServeClientError) as e:
                plain.list_models()
            assert e.value.code == grpc.StatusCode.UNIMPLEMENTED
    # The container's healthcheck follows SEQSERVE_HEALTH_ADDRESS.
    env = {**os.environ, "SEQSERVE_HEALTH_ADDRESS": f"0.0.0.0:{server.health_port}"}
    check = [sys.executable, str(REPO / "deploy" / "healthcheck.py")]
    done = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    # Without it, a check against the TLS port says what to set instead of hanging.
    env = {**os.environ, "SEQSERVE_ADDRESS": f"127.0.0.1:{server.port}", "SEQSERVE_TLS_CERT": "x"}
    env.pop("SEQSERVE_HEALTH_ADDRESS", None)
    done = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "SEQSERVE_HEALTH_ADDRESS" in done.stderr


def test_renewed_certificates_are_used_for_new_connections(
    zoo: Zoo, certs: Certs, tmp_path: Path
) -> None:
    live = Pair(tmp_path / "tls.crt", tmp_path / "tls.key")
    shutil.copy(certs.server.cert, live.cert)
    shutil.copy(certs.server.key, live.key)
    settings = settings_for(zoo.repository, tls_cert=str(live.cert), tls_key=str(live.key))
    renewed_ca = Authority(tmp_path / "renewed", "renewed CA")
    with ServerThread(settings) as server:
        with Client(server.target, tls=TLS(ca=certs.ca.cert), timeout=5) as old:
            old.list_models()
        renewed = renewed_ca.issue("server2", "seqserve", server=True)
        # As a Secret update lands: both files replaced.
        shutil.copy(renewed.cert, live.cert)
        shutil.copy(renewed.key, live.key)
        time.sleep(1.2)  # the files are looked at once a second at most
        deadline = time.monotonic() + 10
        while True:
            with Client(server.target, tls=TLS(ca=renewed_ca.cert), timeout=5) as new:
                try:
                    new.list_models()
                    break
                except UnavailableError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.3)
        stale = Client(server.target, tls=TLS(ca=certs.ca.cert), timeout=5)
        with stale, pytest.raises(UnavailableError):
            stale.list_models()  # a new connection gets the renewed certificate


def test_unusable_certificate_files_are_refused_at_startup(certs: Certs, tmp_path: Path) -> None:
    with pytest.raises(TlsError, match="cannot use --tls-cert"):
        TlsFiles(certs.server.cert, certs.alice.key).load()  # a key of another certificate
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TlsError, match="cannot use --tls-client-ca"):
        TlsFiles(certs.server.cert, certs.server.key, garbage).load()


def test_serve_refuses_half_a_tls_configuration(
    certs: Certs, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    assert cli.main(["serve", "--tls-cert", str(certs.server.cert)]) == 2
    assert "--tls-cert needs --tls-key" in capsys.readouterr().err
    args = ["serve", "--tls-client-ca", str(certs.ca.cert)]
    assert cli.main(args) == 2
    assert "--tls-client-ca needs --tls-cert" in capsys.readouterr().err
    mismatched = ["--tls-cert", str(certs.server.cert), "--tls-key", str(certs.bob.key)]
    assert cli.main(["serve", "--address", "127.0.0.1:0", *mismatched]) == 1
    assert "the key does not match the certificate" in caplog.text


def test_the_cli_speaks_mtls(
    mtls_server: ServerThread, certs: Certs, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ["--target", mtls_server.target]
    assert cli.main(["models", *target]) == 1
    capsys.readouterr()
    flags = ["--tls-ca", str(certs.ca.cert)]
    flags += ["--tls-cert", str(certs.alice.cert), "--tls-key", str(certs.alice.key)]
    assert cli.main(["models", *target, *flags]) == 0
    assert MODEL in capsys.readouterr().out
    with pytest.raises(SeqServeClientError, match="expected both cert and key"):
        TLS(ca=certs.ca.cert, cert=certs.alice.cert)
