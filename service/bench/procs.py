"""Server subprocesses the benchmark starts, waits for, measures and stops."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

SERVER_READY_PREFIX = "seqserve listening on "


class ServerProcess:
    """A child process that prints `<ready_prefix>HOST:PORT` once it serves.

    Its output is drained by a thread (a full pipe would stall the server) and
    the last lines are kept for the error message when it fails to start.
    """

    def __init__(self, name: str, argv: list[str], ready_prefix: str) -> None:
        self.name = name
        self._argv = argv
        self._ready_prefix = ready_prefix
        self._proc: subprocess.Popen[str] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        self._ready = threading.Event()
        self._drainer: threading.Thread | None = None
        self.address = ""

    def start(self, timeout_s: float = 30.0) -> str:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(
            self._argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self._drainer = threading.Thread(
            target=self._drain, name=f"{self.name}-output", daemon=True
        )
        self._drainer.start()
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.05):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "".join(self._tail)
                raise RuntimeError(
                    f"{self.name} did not print {self._ready_prefix!r} within {timeout_s:.0f} s "
                    f"(exit code {self._proc.returncode}); its last output:\n{tail}"
                )
        return self.address

    def _drain(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._tail.append(line)
            if not self._ready.is_set():
                at = line.find(self._ready_prefix)
                if at >= 0:
                    self.address = line[at + len(self._ready_prefix) :].split()[0].strip()
                    self._ready.set()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def output_tail(self) -> str:
        return "".join(self._tail)

    def stop(self, timeout_s: float = 10.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._drainer is not None:
            self._drainer.join(timeout_s)  # it ends at the pipe's end of file
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc, no extra dependency)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy so far (Linux /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _stat_cpu(path: Path) -> float:
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds a process has used so far: (all threads, its main thread) (Linux /proc).

    The main thread runs a server's event loop; the rest are ONNX Runtime's worker
    and grpc's polling threads.
    """
    return _stat_cpu(Path(f"/proc/{pid}/stat")), _stat_cpu(Path(f"/proc/{pid}/task/{pid}/stat"))


def seqserve_server(repository: Path, max_sessions: int, extra: list[str]) -> ServerProcess:
    argv = [
        sys.executable,
        "-m",
        "seqserve",  # == seqserve serve
        "--repository",
        str(repository),
        "--address",
        "127.0.0.1:0",
        "--max-sessions",
        str(max_sessions),
        *extra,
    ]
    return ServerProcess("seqserve server", argv, SERVER_READY_PREFIX)


def reference_server(repository: Path, model: str) -> ServerProcess:
    """The inline reference (seqserve.bench.echo --model): a model step per message, no core."""
    from seqserve.bench.echo import READY_PREFIX

    argv = [sys.executable, "-m", "seqserve.bench.echo", "--address", "127.0.0.1:0"]
    argv += ["--repository", str(repository), "--model", model]
    return ServerProcess("inline reference server", argv, READY_PREFIX)


def echo_server(input_size: int, output_size: int) -> ServerProcess:
    from seqserve.bench.echo import READY_PREFIX

    argv = [
        sys.executable,
        "-m",
        "seqserve.bench.echo",
        "--address",
        "127.0.0.1:0",
        "--input-size",
        str(input_size),
        "--output-size",
        str(output_size),
    ]
    return ServerProcess("echo server", argv, READY_PREFIX)
