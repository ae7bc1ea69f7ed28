"""The grpc.aio server and its lifecycle: startup, serve, shutdown.

Startup loads the model repository, starts the session manager, registers the
Inference servicer, health checking and reflection, binds the address and
logs "seqserve listening on HOST:PORT". Shutdown (SIGTERM/SIGINT, or
`Server.shutdown`) runs in a fixed order: health NOT_SERVING, stop accepting
new calls, let in-flight steps finish within the grace period, end open
streams with UNAVAILABLE, then cancel whatever is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from seqserve.api import inference_pb2
from seqserve.api import seqserve_pb2 as pb
from seqserve.core import errors
from seqserve.core.reload import Reloader
from seqserve.core.runtime import ModelRegistry
from seqserve.core.sessions import SessionManager
from seqserve.grpc.admin import AdminServicer
from seqserve.grpc.auth import TokenTable
from seqserve.grpc.calls import Calls
from seqserve.grpc.registration import add_servicer
from seqserve.grpc.servicer import InferenceServicer
from seqserve.grpc.tls import TlsFiles, server_credentials
from seqserve.kserve.servicer import KServeServicer
from seqserve.settings import ServerSettings
from seqserve.store import open_store
from seqserve.store.memory import MemoryDirectory

log = logging.getLogger("seqserve")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Inference"].full_name  # seqserve.v1.Inference
ADMIN_NAME: str = pb.DESCRIPTOR.services_by_name["Admin"].full_name  # seqserve.v1.Admin
KSERVE_NAME: str = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICES = ("", SERVICE_NAME, KSERVE_NAME)
MAINTAIN_S = 5.0  # how often removed versions are looked at for unloading, without a watch
EXIT_STORE_FAILED = 3  # the exit code of a server whose session store failed
PENDING_CALLS = 65_536  # calls received and not yet in a handler, before grpc refuses any


class Server:
    """One serving process's gRPC server. Use `running_server` or `serve`."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.port = 0  # the bound port, known after startup
        self._grpc: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._sessions: SessionManager | None = None
        self._servicer: InferenceServicer | None = None
        self._shutdown: asyncio.Task[None] | None = None
        self.stop_requested = asyncio.Event()  # a signal, or a store that failed
        self._metrics: Any = None  # the /metrics HTTP server, when --metrics-address is set
        self.metrics_port = 0
        self.calls: Calls | None = None  # authentication and counts of every service's calls
        self._reloader: Reloader | None = None
        self._watch: asyncio.Task[None] | None = None
        self._kserve: KServeServicer | None = None
        self._kserve_grpc: grpc.aio.Server | None = None  # --kserve-address
        self.kserve_port = 0
        self._health_grpc: grpc.aio.Server | None = None  # --health-address
        self.health_port = 0
        self.exit_code = 0

    @property
    def sessions(self) -> SessionManager:
        """The serving core (introspection; started by `startup`)."""
        if self._sessions is None:
            raise RuntimeError("the server has not started")
        return self._sessions

    @property
    def host(self) -> str:
        return self.settings.address.rpartition(":")[0]

    @property
    def target(self) -> str:
        """Where a client on this machine reaches the server."""
        host = self.host
        if host in ("0.0.0.0", "[::]", "::"):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    async def startup(self) -> int:
        """Load models, start the core, bind; returns the bound port."""
        started = time.perf_counter()
        settings = self.settings
        credentials = self._credentials()  # unusable certificates fail before models load
        # Loading builds and times ORT sessions (ms per small model, more for large
        # graphs): off the event loop, like every model call.
        registry = await asyncio.to_thread(
            ModelRegistry.load, settings.repository, settings.ort_threads
        )
        self._sessions = SessionManager(
            registry,
            settings.core(),
            MemoryDirectory,
            store=open_store(settings.store),
            on_store_failure=self._store_failed,
        )
        await self._sessions.start()
        self._reloader = Reloader(self._sessions)
        self.calls = Calls(
            TokenTable(Path(settings.auth_tokens)) if settings.auth_tokens else None,
            client_certificates=bool(settings.tls_client_ca),
        )
        self._kserve = KServeServicer(self._sessions, self.calls)
        self._servicer = InferenceServicer(
            self._sessions,
            self.calls,
            max_message_bytes=settings.max_message_bytes,
            max_streams=settings.max_streams,
        )
        try:
            if settings.metrics_address:
                from seqserve.grpc.metrics import serve_metrics  # prometheus_client: only if on

                self._metrics, self.metrics_port = serve_metrics(
                    settings.metrics_address, self._sessions, self.calls.requests
                )
            self._grpc = await self._bind(credentials)
            if settings.health_address:
                self._health_grpc, self.health_port = await self._bind_health()
            if settings.kserve_address:
                self._kserve_grpc, self.kserve_port = await self._bind_kserve(credentials)
            for name in HEALTH_SERVICES:
                await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
            interval = settings.reload_interval_s
            self._watch = asyncio.create_task(
                self._reloader.watch(interval or MAINTAIN_S, reload=interval > 0),
                name="model repository watch",
            )
        except BaseException:
            self._stop_metrics()
            if self._grpc is not None:
                await self._grpc.stop(None)
            await self._sessions.stop(0.0)  # nothing was served: no steps to drain
            raise
        log.info(
            "seqserve listening on %s:%d (ready in %.2f s)",
            self.host,
            self.port,
            time.perf_counter() - started,
        )
        return self.port

    def _options(self) -> list[tuple[str, int]]:
        """grpc options of a port that serves calls (the main one, --kserve-address)."""
        settings = self.settings
        # Calls grpc has received and not yet handed to a handler wait in a queue that,
        # past 1,000 (its default), fails new ones with INTERNAL "Internal error from
        # Core": 2,000 streams opened at once lost 5-9 % that way. The handlers refuse
        # past --max-streams with a status that says so; the queue is made deep enough
        # for a burst of calls to reach them first.
        pending = max(PENDING_CALLS, 4 * settings.max_streams)
        return [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not share
            ("grpc.server.max_pending_requests", pending),
            ("grpc.server.max_pending_requests_hard_limit", 2 * pending),
        ]

    async def _bind(self, credentials: grpc.ServerCredentials | None) -> grpc.aio.Server:
        """The grpc.aio server with every service added, listening on the address."""
        assert self._servicer is not None
        settings = self.settings
        server = grpc.aio.server(options=self._options())
        add_servicer(self._servicer, server)  # undecodable requests: INVALID_ARGUMENT
        assert self._reloader is not None
        assert self.calls is not None
        admin = AdminServicer(self._reloader, self.calls, settings.admins())
        add_servicer(admin, server, "Admin")
        assert self._kserve is not None
        add_servicer(self._kserve, server, "GRPCInferenceService", inference_pb2)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, ADMIN_NAME, KSERVE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
            server,
        )
        self.port = _listen(server, settings.address, credentials)
        await server.start()
        return server

    def _credentials(self) -> grpc.ServerCredentials | None:
        """TLS (mTLS with a client CA) for the gRPC port, or None for plaintext."""
        settings = self.settings
        if not settings.tls_cert:
            return None
        client_ca = Path(settings.tls_client_ca) if settings.tls_client_ca else None
        files = TlsFiles(Path(settings.tls_cert), Path(settings.tls_key), client_ca)
        return server_credentials(files)

    async def _bind_kserve(
        self, credentials: grpc.ServerCredentials | None
    ) -> tuple[grpc.aio.Server, int]:
        """--kserve-address: the KServe service (and health) on a port of its own, for
        clients that expect it apart (Triton's 8001), with the same TLS."""
        assert self._kserve is not None
        settings = self.settings
        server = grpc.aio.server(options=self._options())
        add_servicer(self._kserve, server, "GRPCInferenceService", inference_pb2)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        port = _listen(server, settings.kserve_address, credentials)
        await server.start()
        return server, port

    async def _bind_health(self) -> tuple[grpc.aio.Server, int]:
        """A plaintext port with only grpc.health.v1: kubelet's gRPC probes speak no TLS.

        It shares the health servicer, so it reports what the main port's health reports.
        """
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        port = _listen(server, self.settings.health_address, None)
        await server.start()
        return server, port

    @property
    def reloader(self) -> Reloader:
        """Model control (ReloadModels, the watch); started by `startup`."""
        if self._reloader is None:
            raise RuntimeError("the server has not started")
        return self._reloader

    def reload_tokens(self) -> None:
        """SIGHUP: read the --auth-tokens file again (a bad one keeps the previous tokens)."""
        if self.calls is not None and self.calls.tokens is not None:
            self.calls.tokens.reload()

    def _stop_metrics(self) -> None:
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
            self._metrics = None

    def _store_failed(self, exc: BaseException) -> None:
        """The session store cannot be written: nothing more can be acknowledged. Stop (exit 3)
        so that a supervisor restarts the server, which recovers what the store holds."""
        log.critical("stopping: the session store failed (%s: %s)", type(exc).__name__, exc)
        self.exit_code = EXIT_STORE_FAILED
        self.stop_requested.set()

    def shutdown(self) -> asyncio.Task[None]:
        """Start the graceful shutdown once; every later call returns the same task."""
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(self._graceful_shutdown())
        return self._shutdown

    async def _graceful_shutdown(self) -> None:
        assert self._grpc is not None and self._sessions is not None
        assert self._servicer is not None
        grace = self.settings.grace_period_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        log.info("shutting down: draining in-flight steps (grace period %.1f s)", grace)
        await self._health.enter_graceful_shutdown()  # every service NOT_SERVING
        if self._watch is not None:
            self._watch.cancel()
        # New calls are refused by the handlers (UNAVAILABLE), not by grpc: its stop
        # cancels calls received and not yet handled, which a client cannot retry safely.
        await self._sessions.stop(grace)  # in-flight steps finish; later ones get UNAVAILABLE
        self._servicer.close_streams()  # each ends UNAVAILABLE once its steps are answered
        assert self._kserve is not None
        self._kserve.stop_serving(errors.Unavailable("server shutting down"))
        assert self.calls is not None
        await self.calls.quiet(deadline)
        await self._grpc.stop(max(deadline - loop.time(), 0.5))  # then what still runs is cut
        for extra in (self._kserve_grpc, self._health_grpc):
            if extra is not None:
                await extra.stop(None)
        self._stop_metrics()
        log.info("seqserve stopped")


def _listen(
    server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None
) -> int:
    """Bind `address` (plaintext without credentials); the bound port, or OSError."""
    try:
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {_why_not(address) or exc}") from exc


def _why_not(address: str) -> str:
    """Why a port cannot be bound, in words (grpc only says that it failed)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (
                    f"port {port} is already in use (another server, or an earlier seqserve "
                    "still running); stop it or choose another with --address"
                )
            if exc.errno == errno.EACCES:
                return f"port {port} needs privileges; choose one above 1023 with --address"
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"{host} is not an address of this machine; use 0.0.0.0 or 127.0.0.1"
            return exc.strerror or str(exc)
    return ""


@contextlib.asynccontextmanager
async def running_server(settings: ServerSettings) -> AsyncIterator[Server]:
    """An in-process server for tests and tools: `async with running_server(s) as srv: srv.port`.

    Use port 0 in `settings.address` to get a free port.
    """
    server = Server(settings)
    await server.startup()
    try:
        yield server
    finally:
        await server.shutdown()


async def serve(settings: ServerSettings) -> int:
    """Serve until SIGTERM or SIGINT (or a failed store), shut down gracefully; the exit code."""
    loop = asyncio.get_running_loop()
    server = Server(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Before startup: a signal during it is then acted on once it is done.
        loop.add_signal_handler(sig, server.stop_requested.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload_tokens)
    try:
        await server.startup()
        await server.stop_requested.wait()
        await server.shutdown()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return server.exit_code
