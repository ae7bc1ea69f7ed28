"""Model control without a restart: versions added and removed while sessions stream,
broken versions refused, the watch, the admin RPC's permissions and the CLI."""

from __future__ import annotations

import logging
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from seqserve import cli
from seqserve.client import Client, NotFoundError, SeqServeClientError
from seqserve.core.spec import ONNX_FILE, SPEC_FILE
from tests.grpc.conftest import TOL, Zoo, settings_for
from tests.grpc.harness import ServerThread
from tests.support import REPOSITORY_MODELS, export_shapes, torch_reference

MODEL = "gru-ar"
STEPS = 300


@pytest.fixture
def repo(zoo: Zoo, tmp_path: Path) -> Path:
    """A repository this test may change: gru-ar/1 and lstm-ar/1 of the zoo."""
    root = tmp_path / "repository"
    for name in (MODEL, "lstm-ar"):
        shutil.copytree(zoo.repository / name, root / name)
    return root


@pytest.fixture(scope="module")
def retrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """gru-ar with the same sizes and other weights: what a new version would hold."""
    root = tmp_path_factory.mktemp("retrained")
    modules = export_shapes(root, {MODEL: REPOSITORY_MODELS[MODEL]}, seed=99).modules
    return root / MODEL / "1", modules[MODEL]


class Streamer:
    """One session streaming one step a message from a thread, every answer kept."""

    def __init__(self, target: str, zoo: Zoo, version: str) -> None:
        self.x = zoo.inputs(MODEL, STEPS, np.random.default_rng(11))
        self.outputs: list[np.ndarray] = []
        self.errors: list[BaseException] = []
        self._target, self._version = target, version
        self.started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with (
                Client(self._target, timeout=10) as client,
                client.session(MODEL, version=self._version) as s,
            ):
                self.outputs += s.stream(self._rows())  # one StepStream, pipelined
        except BaseException as exc:
            self.errors.append(exc)
            self.started.set()

    def _rows(self) -> Iterator[np.ndarray]:
        """One step a message, spread out so that the reload lands mid-stream."""
        for i, row in enumerate(self.x):
            if i == 20:
                self.started.set()
            time.sleep(0.002)
            yield row

    def __enter__(self) -> Streamer:
        self._thread.start()
        assert self.started.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(60)

    def assert_exact(self, zoo: Zoo) -> None:
        assert not self.errors, self.errors
        got = np.concatenate(self.outputs)  # (STEPS, O)
        np.testing.assert_allclose(got, zoo.forward(MODEL, self.x), rtol=TOL, atol=TOL)


def model_states(port: int) -> dict[tuple[str, str], str]:
    """The state label of each seqserve_model_info series: (model, version) -> state."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.labels["model"], s.labels["version"]): s.labels["state"]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "seqserve_model_info"
    }


def names(client: Client) -> dict[str, tuple[list[str], str]]:
    return {m.name: (m.versions, m.latest) for m in client.list_models()}


def test_a_new_version_is_served_and_becomes_latest_while_sessions_stream(
    repo: Path, zoo: Zoo, retrained: tuple[Path, object]
) -> None:
    folder, module = retrained
    with ServerThread(settings_for(repo)) as server, Client(server.target, timeout=30) as client:
        with Streamer(server.target, zoo, "1") as streaming:
            shutil.copytree(folder, repo / MODEL / "2")
            report = client.reload_models()
        streaming.assert_exact(zoo)  # version 1's session: no error, its own model throughout
        assert report.added == [(MODEL, "2")] and not report.removed and not report.refused
        assert names(client)[MODEL] == (["1", "2"], "2")
        x = zoo.inputs(MODEL, 5, np.random.default_rng(2))
        with client.session(MODEL) as s:  # no version: the latest
            assert s.version == "2"
            got = s.step(x)
        np.testing.assert_allclose(got, torch_reference(module, x), rtol=TOL, atol=TOL)  # type: ignore[arg-type]
        assert "lstm-ar" in names(client)  # untouched
        assert client.reload_models().added == []  # nothing new the second time


def test_a_removed_version_keeps_its_open_sessions_and_takes_no_new_ones(
    repo: Path, zoo: Zoo, retrained: tuple[Path, object]
) -> None:
    shutil.copytree(retrained[0], repo / MODEL / "2")
    settings = settings_for(repo, metrics_address="127.0.0.1:0")
    with ServerThread(settings) as server, Client(server.target, timeout=30) as client:
        other = client.create_session("lstm-ar")
        client.step(other.session_id, [1.0, 2.0, 3.0])
        with Streamer(server.target, zoo, "1") as streaming:
            shutil.rmtree(repo / MODEL / "1")
            report = client.reload_models()
            assert report.removed == [(MODEL, "1")]
            with pytest.raises(NotFoundError, match="no version '1'"):
                client.create_session(MODEL, version="1")
        streaming.assert_exact(zoo)  # streamed to its end on the removed version, exact
        assert names(client)[MODEL] == (["2"], "2")
        assert client.get_session(other.session_id).position == 3  # another model: untouched
        assert server.server is not None
        states = model_states(server.server.metrics_port)
        assert states[(MODEL, "1")] == "removed" and states[(MODEL, "2")] == "serving"
        old = server.server.sessions.loaded(MODEL, "1")
        assert old is not None and old.retired
        reloader = server.server.reloader

        async def unload() -> int:  # what the server does every few seconds
            return reloader.unload_unused()

        assert server.call(unload) == 1  # its last session closed: its batcher stops
        deadline = time.monotonic() + 10
        while not old.batcher.stopped:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert server.call(unload) == 0
        assert (MODEL, "1") not in model_states(server.server.metrics_port)


def test_a_broken_version_is_refused_and_changes_nothing(
    repo: Path, zoo: Zoo, caplog: pytest.LogCaptureFixture
) -> None:
    broken = repo / MODEL / "2"
    with ServerThread(settings_for(repo)) as server, Client(server.target, timeout=30) as client:
        shutil.copytree(zoo.repository / MODEL / "1", broken)
        (broken / ONNX_FILE).write_bytes((broken / ONNX_FILE).read_bytes()[:200])  # truncated
        (repo / "empty-model").mkdir()  # a model folder with no versions
        before = names(client)
        sid = client.create_session(MODEL).session_id
        client.step(sid, [1.0, 2.0])
        with caplog.at_level(logging.ERROR, "seqserve"):
            report = client.reload_models()
        refused = {(n, v): why for n, v, why in report.refused}
        assert "cannot load" in refused[(MODEL, "2")]
        assert "no version folders" in refused[("empty-model", "")]
        assert not report.added and not report.removed
        assert names(client) == before and before[MODEL] == (["1"], "1")
        assert f"model {MODEL}/2 refused, nothing changed" in caplog.text
        assert client.step(sid, [1.0, 2.0]).shape == (1, 2)
        assert client.get_session(sid).position == 2
        # Fixed files are tried again and served.
        shutil.copy(zoo.repository / MODEL / "1" / ONNX_FILE, broken / ONNX_FILE)
        assert client.reload_models().added == [(MODEL, "2")]


def test_a_version_changed_in_place_stays_as_loaded(
    repo: Path, zoo: Zoo, caplog: pytest.LogCaptureFixture, retrained: tuple[Path, object]
) -> None:
    with ServerThread(settings_for(repo)) as server, Client(server.target, timeout=30) as client:
        x = zoo.inputs(MODEL, 4, np.random.default_rng(5))
        shutil.copy(retrained[0] / ONNX_FILE, repo / MODEL / "1" / ONNX_FILE)
        shutil.copy(retrained[0] / SPEC_FILE, repo / MODEL / "1" / SPEC_FILE)
        with caplog.at_level(logging.WARNING, "seqserve"):
            report = client.reload_models()
        assert not (report.added or report.removed or report.refused)
        assert f"model {MODEL}/1 changed in place" in caplog.text
        with client.session(MODEL) as s:
            zoo.assert_matches(MODEL, x, s.step(x))  # still the model it loaded


def test_the_repository_is_watched(repo: Path, zoo: Zoo) -> None:
    with (
        ServerThread(settings_for(repo, reload_interval_s=0.2)) as server,
        Client(server.target, timeout=30) as client,
    ):
        shutil.copytree(zoo.repository / "rnn-ar", repo / "rnn-ar")
        deadline = time.monotonic() + 20
        while "rnn-ar" not in names(client):
            assert time.monotonic() < deadline, "the watch did not add rnn-ar"
            time.sleep(0.1)
        with client.session("rnn-ar") as s:
            x = zoo.inputs("rnn-ar", 3, np.random.default_rng(1))
            zoo.assert_matches("rnn-ar", x, s.step(x))


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text("alice-secret alice\nbob-secret bob\n")
    return path


def test_only_admin_principals_may_reload(repo: Path, tokens: Path) -> None:
    settings = settings_for(repo, auth_tokens=str(tokens), admin_principals="alice")
    with ServerThread(settings) as server:
        cases: dict[str | None, grpc.StatusCode | None] = {
            None: grpc.StatusCode.UNAUTHENTICATED,
            "wrong": grpc.StatusCode.UNAUTHENTICATED,
            "bob-secret": grpc.StatusCode.PERMISSION_DENIED,
            "alice-secret": None,
        }
        for token, code in cases.items():
            with Client(server.target, token=token, timeout=30) as client:
                if code is None:
                    assert client.reload_models().added == []
                    continue
                with pytest.raises(SeqServeClientError) as e:
                    client.reload_models()
                assert e.value.code == code, token


def test_seqserve_models_reload(
    repo: Path, zoo: Zoo, capsys: pytest.CaptureFixture[str], tokens: Path
) -> None:
    settings = settings_for(repo, auth_tokens=str(tokens), admin_principals="alice")
    with ServerThread(settings) as server:

        def run() -> int:
            return cli.main(
                ["models", "reload", "--target", server.target, "--token", "alice-secret"]
            )

        assert run() == 0 and "no change" in capsys.readouterr().out
        shutil.copytree(zoo.repository / "rnn-ar", repo / "rnn-ar")
        assert run() == 0 and "added    rnn-ar/1" in capsys.readouterr().out
        (repo / "hollow").mkdir()
        assert run() == 1 and "refused  hollow: " in capsys.readouterr().out
        assert cli.main(["models", "reload", "--repository", str(repo)]) == 2
