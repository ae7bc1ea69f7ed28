"""Container health check: exit 0 when the local server's gRPC health service says SERVING.

The image's HEALTHCHECK and the compose file run this; Kubernetes uses its
native gRPC probes instead. It dials SEQSERVE_HEALTH_ADDRESS, the plaintext
health-only port, when that is set (it must be under TLS: this check speaks
plaintext), else SEQSERVE_ADDRESS, so the check follows a changed address.
Usage: healthcheck.py [SERVICE] ("" = the whole server, "seqserve.v1.Inference"
= the inference service).
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_ADDRESS = "0.0.0.0:50051"
TIMEOUT_S = 3.0


def local_target(address: str, variable: str = "SEQSERVE_ADDRESS") -> str:
    """The address to dial for a server listening on `address` in this container."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{variable}: expected HOST:PORT, got {address!r}")
    if host in ("", "0.0.0.0", "[::]", "::", "*"):
        host = "127.0.0.1"  # a wildcard bind answers on loopback
    return f"{host}:{port}"


def main(argv: list[str]) -> int:
    service = argv[0] if argv else ""
    health = os.environ.get("SEQSERVE_HEALTH_ADDRESS", "")
    if not health and os.environ.get("SEQSERVE_TLS_CERT"):
        print(
            "unhealthy: the gRPC port speaks TLS; set SEQSERVE_HEALTH_ADDRESS (a plaintext "
            "health-only port) for this check",
            file=sys.stderr,
        )
        return 1
    try:
        if health:
            target = local_target(health, "SEQSERVE_HEALTH_ADDRESS")
        else:
            target = local_target(os.environ.get("SEQSERVE_ADDRESS", DEFAULT_ADDRESS))
    except ValueError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    request = health_pb2.HealthCheckRequest(service=service)
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(request, timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
            print(f"unhealthy: {target} service {service!r}: {code}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {target} service {service!r}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
