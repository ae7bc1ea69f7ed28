"""Run a real seqserve server for tests: in-process on its own event loop, or as a subprocess."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, TypeVar

import grpc

from seqserve.api import seqserve_pb2 as pb
from seqserve.api import seqserve_pb2_grpc as pb_grpc
from seqserve.client import Client
from seqserve.grpc.server import Server, running_server
from seqserve.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"seqserve listening on (\S+):(\d+)")
_T = TypeVar("_T")


class ServerThread:
    """A server on a free port, served by an event loop in a background thread.

    Tests drive it from their own thread with the sync client, or with
    asyncio.run() and the async client; `call` runs a coroutine on the server's loop.
    """

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = replace(settings, address="127.0.0.1:0")
        self.server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="seqserve-test-server", daemon=True)

    @property
    def target(self) -> str:
        assert self.server is not None
        return self.server.target

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._error is not None:
            raise self._error
        assert self.server is not None, "server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
        if self._error is not None:
            raise self._error

    def call(self, fn: Callable[[], Awaitable[_T]], timeout: float = 30) -> _T:
        """Run `fn()` on the server's event loop (e.g. start its shutdown) and return its result."""
        assert self._loop is not None

        async def run() -> _T:
            return await fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def begin_shutdown(self) -> concurrent.futures.Future[None]:
        """Start the server's graceful shutdown without waiting for it."""
        assert self._loop is not None and self.server is not None
        server = self.server

        async def shutdown() -> None:
            await server.shutdown()

        return asyncio.run_coroutine_threadsafe(shutdown(), self._loop)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced to the test thread by __enter__/stop
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with running_server(self.settings) as server:
            self.server = server
            self._ready.set()
            await self._stop.wait()


class ServerProcess:
    """`python -m seqserve` in a subprocess on a free port; the port is read from its log."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, max_file_bytes: int | None = None
    ) -> None:
        self.args = ["--address", "127.0.0.1:0", *args]
        self.env = {**os.environ, **(env or {})}
        self.max_file_bytes = max_file_bytes  # RLIMIT_FSIZE: files it writes stop growing there
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.log: list[str] = []
        self._drainer: threading.Thread | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "seqserve", *self.args],
            cwd=ROOT,
            env=self.env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            preexec_fn=None if self.max_file_bytes is None else self._limit_files,
        )
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            match = LISTENING.search(line)
            if match:
                self.port = int(match.group(2))
                self._drainer = threading.Thread(
                    target=self._drain, args=(self.proc.stderr,), daemon=True
                )
                self._drainer.start()
                return self
        self.proc.kill()
        self.proc.wait()
        self.proc.stderr.close()
        raise RuntimeError("server did not start:\n" + "".join(self.log))

    def _limit_files(self) -> None:
        assert self.max_file_bytes is not None
        # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG, as a full disk would.
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.max_file_bytes, self.max_file_bytes))

    def _drain(self, stream: IO[str]) -> None:
        for line in stream:
            self.log.append(line)

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def __exit__(self, *exc: Any) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._drainer is not None:
            self._drainer.join(timeout=10)  # EOF once the process is gone
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def settled_position(client: Client, sid: str, timeout_s: float = 10.0) -> int:
    """The session's position once three reads 20 ms apart agree.

    A cancel or a disconnect reaches the server asynchronously: a step already
    in a model call when it lands still completes.
    """
    deadline = time.monotonic() + timeout_s
    seen = [client.get_session(sid).position]
    while time.monotonic() < deadline:
        time.sleep(0.02)
        seen.append(client.get_session(sid).position)
        if len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3]:
            return seen[-1]
    raise AssertionError(f"position kept moving: {seen[-5:]}")


def create_sessions(target: str, model: str, n: int, concurrency: int = 256) -> list[str]:
    """`n` new sessions of `model`, created by concurrent calls (tens of seconds one by one)."""

    async def main() -> list[str]:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.InferenceStub(channel)
            gate = asyncio.Semaphore(concurrency)

            async def one() -> str:
                async with gate:
                    info = await stub.CreateSession(pb.CreateSessionRequest(model=model))
                    return str(info.session_id)

            return list(await asyncio.gather(*(one() for _ in range(n))))

    return asyncio.run(main())
