"""The access log, JSON log lines and `seqserve --version`."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seqserve.client import Client, NotFoundError
from seqserve.logs import ACCESS, JsonFormatter, access_line, configure
from tests.grpc.conftest import Zoo, settings_for
from tests.grpc.harness import ServerThread

MODEL = "gru-ar"


@pytest.fixture
def access_on() -> object:
    ACCESS.setLevel(logging.INFO)
    yield None
    ACCESS.setLevel(logging.NOTSET)


def test_one_access_line_per_call_with_its_fields(
    zoo: Zoo, access_on: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="seqserve.access")
    with ServerThread(settings_for(zoo.repository)) as running, Client(running.target) as client:
        sid = client.create_session(MODEL, session_id="meter-3").session_id
        client.step(sid, [1.0, 2.0])
        with pytest.raises(NotFoundError):
            client.step("gone", [1.0, 2.0])
        list(client.step_stream([(sid, [1.0, 1.0]), (sid, [2.0, 2.0])]))
    lines = [r for r in caplog.records if r.name == "seqserve.access"]
    got = [(r.rpc, r.session, r.code, getattr(r, "messages", None)) for r in lines]  # type: ignore[attr-defined]
    assert got == [
        ("CreateSession", "meter-3", "OK", None),
        ("Step", "meter-3", "OK", None),
        ("Step", "gone", "NOT_FOUND", None),
        ("StepStream", "meter-3", "OK", 2),
    ]
    for r in lines:
        assert r.principal == "anonymous" and r.ms >= 0  # type: ignore[attr-defined]
        assert len(r.request_id) == 12  # type: ignore[attr-defined]
    assert len({r.request_id for r in lines}) == len(lines)  # type: ignore[attr-defined]


def test_the_access_log_is_off_by_default(zoo: Zoo, caplog: pytest.LogCaptureFixture) -> None:
    handlers = list(logging.getLogger().handlers)
    configure("info", "text", access=False)
    caplog.set_level(logging.INFO)
    try:
        assert logging.getLogger().handlers == handlers  # pytest's: none added beside them
        with ServerThread(settings_for(zoo.repository)) as running, Client(running.target) as c:
            c.create_session(MODEL)
        assert not [r for r in caplog.records if r.name == "seqserve.access"]
    finally:
        ACCESS.setLevel(logging.NOTSET)


def test_json_lines_carry_the_access_fields() -> None:
    record = logging.LogRecord("seqserve.access", logging.INFO, __file__, 1, "msg %s", ("x",), None)
    for k, v in {"rpc": "Step", "code": "OK", "ms": 0.5, "session": "s"}.items():
        setattr(record, k, v)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "msg x" and line["level"] == "info"
    assert (line["rpc"], line["code"], line["ms"], line["session"]) == ("Step", "OK", 0.5, "s")
    assert "request_id" not in line  # only fields the record has


def test_access_lines_in_json_from_a_server_process(zoo: Zoo) -> None:
    """The whole path as an operator runs it: flags, JSON on stderr, one line per call."""
    argv = [sys.executable, "-m", "seqserve", "serve", "--repository", str(zoo.repository),
            "--address", "127.0.0.1:0", "--log-format", "json", "--access-log", "on"]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = json.loads(proc.stderr.readline())
        while "listening on" not in first["message"]:
            first = json.loads(proc.stderr.readline())
        target = first["message"].split("listening on ")[1].split()[0]
        with Client(target) as client:
            sid = client.create_session(MODEL).session_id
            client.step(sid, np.zeros(2, np.float32))
        seen = []
        while len(seen) < 2:
            line = json.loads(proc.stderr.readline())
            if line["logger"] == "seqserve.access":
                seen.append((line["rpc"], line["code"], line["session"]))
        assert seen == [("CreateSession", "OK", ""), ("Step", "OK", sid)]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stderr is not None:
            proc.stderr.close()


def test_version_names_the_installed_distribution() -> None:
    expected = f"seqserve {importlib.metadata.version('seqserve')}"
    entry = [str(Path(sys.executable).with_name("seqserve"))]  # the installed command
    for argv in ([sys.executable, "-m", "seqserve"], entry):
        out = subprocess.run([*argv, "--version"], capture_output=True, text=True)
        assert (out.returncode, out.stdout.strip()) == (0, expected), argv


def test_an_access_line_reads_as_text() -> None:
    logger = logging.getLogger("seqserve.access")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        access_line("ab12", "alice", "StepStream", "m-1", "UNAVAILABLE", 0.0125, messages=7)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert (
        records[0].getMessage()
        == "ab12 alice StepStream session=m-1 UNAVAILABLE 12.500 ms messages=7"
    )
