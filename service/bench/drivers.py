"""Client load, run inside separate client processes (see pool.py).

Each job opens its own grpc.aio channel, prepares (creates its sessions), says
it is ready, waits for the common start time, then drives the server until the
window closes or its count bound is hit. Times are `time.monotonic_ns()`,
which is one clock for every process on the machine, so all client processes
share one measured window.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import grpc
import numpy as np

from seqserve.api import seqserve_pb2 as pb
from seqserve.api import seqserve_pb2_grpc as pb_grpc

MAX_LATENCY_SAMPLES = 400_000  # per process and job, bounds the memory a long window takes
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.use_local_subchannel_pool", 1),  # each process its own connection
]
CREATE_CONCURRENCY = 64  # concurrent CreateSession calls while preparing a job
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # the stubs lack it


@dataclass(frozen=True)
class StreamJob:
    """`streams` sessions, each on its own StepStream, sending `values` floats a message."""

    target: str
    model: str
    streams: int
    values: int  # T * input_size
    steps: int  # T
    outputs: int  # T * output_size: what each reply must carry
    warmup_s: float
    window_s: float
    max_messages: int  # per stream
    depth: int = 1  # messages in flight per stream: 1 is ping-pong, more is pipelined
    tls_ca: str = ""  # PEM CA of a server that speaks TLS; empty: plaintext
    protocol: str = "native"  # or "kserve": sequences on ModelStreamInfer (ping-pong)


@dataclass(frozen=True)
class BatchJob:
    """`inflight` loops, each sending BatchStep for its own `batch` sessions, one step each."""

    target: str
    model: str
    batch: int
    inflight: int
    input_size: int
    output_size: int
    warmup_s: float
    window_s: float
    max_messages: int  # per loop
    tls_ca: str = ""


@dataclass(frozen=True)
class CreateJob:
    """Open up to `count` sessions with `concurrency` concurrent CreateSession calls."""

    target: str
    model: str
    count: int
    concurrency: int
    budget_s: float
    tls_ca: str = ""


Job = StreamJob | BatchJob | CreateJob


@dataclass
class LoadResult:
    messages: int = 0  # replies completed inside the window
    items: int = 0  # session-steps those replies carried
    window_s: float = 0.0
    latencies_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    per_stream: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    created: int = 0
    elapsed_s: float = 0.0
    probe_delta: tuple[float, ...] | None = None  # set by the pool: server CPU s in the window


class _Recorder:
    """Counts what completes inside [start, end] and keeps bounded latency samples."""

    def __init__(self, start_ns: int, end_ns: int, slots: int) -> None:
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.latencies: list[int] = []
        self.per_slot = np.zeros(slots, np.int64)
        self.messages = 0
        self.items = 0
        self.errors = 0
        self.error_samples: list[str] = []

    def done(self, slot: int, t0: int, t1: int, items: int) -> None:
        if self.start_ns <= t1 <= self.end_ns:
            self.messages += 1
            self.items += items
            self.per_slot[slot] += 1
            if len(self.latencies) < MAX_LATENCY_SAMPLES:
                self.latencies.append(t1 - t0)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what)

    def result(self) -> LoadResult:
        return LoadResult(
            messages=self.messages,
            items=self.items,
            window_s=(self.end_ns - self.start_ns) / 1e9,
            latencies_ns=np.asarray(self.latencies, np.int64),
            per_stream=self.per_slot,
            errors=self.errors,
            error_samples=self.error_samples,
        )


def _channel(job: Job) -> grpc.aio.Channel:
    """The job's connection: TLS when it names the server's CA."""
    if not job.tls_ca:
        return grpc.aio.insecure_channel(job.target, options=CHANNEL_OPTIONS)
    with open(job.tls_ca, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    return grpc.aio.secure_channel(job.target, credentials, options=CHANNEL_OPTIONS)


def _stub(channel: grpc.aio.Channel) -> Any:
    return pb_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]


async def _create_sessions(stub: Any, model: str, n: int) -> list[str]:
    sem = asyncio.Semaphore(CREATE_CONCURRENCY)
    request = pb.CreateSessionRequest(model=model)

    async def one() -> str:
        async with sem:
            info = await stub.CreateSession(request)
            return str(info.session_id)

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def _close_sessions(stub: Any, ids: list[str]) -> None:
    sem = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def one(sid: str) -> None:
        async with sem:
            # Already gone (evicted, or the server is stopping): nothing left to free.
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.CloseSession(pb.CloseSessionRequest(session_id=sid))

    await asyncio.gather(*(one(s) for s in ids))


async def _wait_for_go(conn: Connection) -> int:
    """Tell the pool this process is ready; return the common start time (ns)."""
    conn.send(("ready", None))
    start_ns = await asyncio.to_thread(conn.recv)
    assert isinstance(start_ns, int)
    delay = (start_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)
    return start_ns


class _Stream:
    """One session on its own StepStream: ping-pong (write one message, read its reply),
    or pipelined with up to `depth` messages in flight, as a client streaming a series does."""

    def __init__(self, stub: Any, slot: int, sid: str, job: StreamJob) -> None:
        self._call = stub.StepStream()
        self._request = pb.StepRequest(session_id=sid, values=[0.5] * job.values)
        self._slot = slot
        self._job = job
        self._sent = 0

    async def _round_trip(self) -> Any:
        self._sent += 1
        self._request.request_id = self._sent
        await self._call.write(self._request)
        return await self._call.read()

    async def open(self) -> None:
        """One round trip before the load starts, so the measured window sees streams the
        server has already accepted (a loaded grpc.aio server accepts new calls slowly)."""
        response = await self._round_trip()
        if response is EOF:
            raise RuntimeError(
                f"stream ended: {await self._call.code()} {await self._call.details()}"
            )

    def _check(self, response: Any, rec: _Recorder) -> bool:
        if response.HasField("error"):
            rec.error(f"in-band error {response.error.code}: {response.error.message}")
            return False
        if len(response.outputs) != self._job.outputs:
            rec.error(f"expected {self._job.outputs} outputs, got {len(response.outputs)}")
            return False
        return True

    async def run(self, rec: _Recorder) -> None:
        try:
            if self._job.depth > 1:
                await self._pipelined(rec)
                return
            while self._sent < self._job.max_messages:
                t0 = time.monotonic_ns()
                if t0 >= rec.end_ns:
                    break
                response = await self._round_trip()
                t1 = time.monotonic_ns()
                if response is EOF:
                    call = self._call
                    rec.error(f"stream ended: {await call.code()} {await call.details()}")
                    return
                if self._check(response, rec):
                    rec.done(self._slot, t0, t1, self._job.steps)
            await self._call.done_writing()
        except grpc.aio.AioRpcError as exc:
            rec.error(f"{exc.code()}: {exc.details()}")

    async def _pipelined(self, rec: _Recorder) -> None:
        room = asyncio.Semaphore(self._job.depth)
        sent_at: collections.deque[int] = collections.deque()  # send times of unanswered messages

        async def write() -> None:
            while self._sent < self._job.max_messages:
                await room.acquire()
                if time.monotonic_ns() >= rec.end_ns:
                    break
                self._sent += 1
                self._request.request_id = self._sent
                sent_at.append(time.monotonic_ns())
                await self._call.write(self._request)
            await self._call.done_writing()

        writer = asyncio.create_task(write())
        try:
            while (response := await self._call.read()) is not EOF:
                t1 = time.monotonic_ns()
                t0 = sent_at.popleft()
                room.release()
                if self._check(response, rec):
                    rec.done(self._slot, t0, t1, self._job.steps)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer


async def _batch_loop(stub: Any, slot: int, ids: list[str], job: BatchJob, rec: _Recorder) -> None:
    values = np.full(len(ids) * job.input_size, 0.5, "<f4")  # (B * F,) one step each
    request = pb.BatchStepRequest(session_ids=ids, values_f32=values.tobytes())
    sent = 0
    while sent < job.max_messages:
        t0 = time.monotonic_ns()
        if t0 >= rec.end_ns:
            break
        sent += 1
        request.request_id = sent
        try:
            response = await stub.BatchStep(request)
        except grpc.aio.AioRpcError as exc:
            rec.error(f"{exc.code()}: {exc.details()}")
            return
        t1 = time.monotonic_ns()
        for item in response.errors:
            rec.error(f"item {item.index}: {item.status.code} {item.status.message}")
        ok = len(ids) - len(response.errors)
        got = len(response.outputs_f32) // 4
        if got != ok * job.output_size:
            rec.error(f"expected {ok * job.output_size} outputs, got {got}")
            continue
        rec.done(slot, t0, t1, ok)


async def _run_stream(job: StreamJob, conn: Connection) -> LoadResult:
    if job.protocol == "kserve":
        from seqserve.bench.kserve_load import run_kserve_stream

        async with _channel(job) as channel:
            return await run_kserve_stream(job, channel, _Recorder, lambda: _wait_for_go(conn))
    async with _channel(job) as channel:
        stub = _stub(channel)
        ids = await _create_sessions(stub, job.model, job.streams)
        streams = [_Stream(stub, i, sid, job) for i, sid in enumerate(ids)]
        await asyncio.gather(*(s.open() for s in streams))
        start_ns = await _wait_for_go(conn)
        warm_end = start_ns + int(job.warmup_s * 1e9)
        rec = _Recorder(warm_end, warm_end + int(job.window_s * 1e9), job.streams)
        await asyncio.gather(*(s.run(rec) for s in streams))
        await _close_sessions(stub, ids)
    return rec.result()


async def _run_batch(job: BatchJob, conn: Connection) -> LoadResult:
    async with _channel(job) as channel:
        stub = _stub(channel)
        # Each loop owns its sessions: a session has at most one step in flight.
        ids = await _create_sessions(stub, job.model, job.batch * job.inflight)
        groups = [ids[i * job.batch : (i + 1) * job.batch] for i in range(job.inflight)]
        start_ns = await _wait_for_go(conn)
        warm_end = start_ns + int(job.warmup_s * 1e9)
        rec = _Recorder(warm_end, warm_end + int(job.window_s * 1e9), job.inflight)
        await asyncio.gather(*(_batch_loop(stub, i, g, job, rec) for i, g in enumerate(groups)))
        await _close_sessions(stub, ids)
    return rec.result()


async def _run_create(
    job: CreateJob, conn: Connection, progress: Synchronized[int] | None
) -> LoadResult:
    result = LoadResult()
    async with _channel(job) as channel:
        stub = _stub(channel)
        request = pb.CreateSessionRequest(model=job.model)
        start_ns = await _wait_for_go(conn)
        deadline = start_ns + int(job.budget_s * 1e9)
        remaining = job.count

        async def creator() -> None:
            nonlocal remaining
            while remaining > 0 and time.monotonic_ns() < deadline:
                remaining -= 1
                try:
                    await stub.CreateSession(request)
                except grpc.aio.AioRpcError as exc:
                    result.errors += 1
                    if len(result.error_samples) < 5:
                        result.error_samples.append(f"{exc.code()}: {exc.details()}")
                    return
                result.created += 1
                if progress is not None and result.created % 256 == 0:
                    progress.value = result.created

        await asyncio.gather(*(creator() for _ in range(job.concurrency)))
        result.elapsed_s = (time.monotonic_ns() - start_ns) / 1e9
        if progress is not None:
            progress.value = result.created
    return result


def worker(conn: Connection, progress: Synchronized[int] | None) -> None:
    """A client process: run jobs from the pool until told to stop."""
    while True:
        job = conn.recv()
        if job is None:
            return
        try:
            if isinstance(job, StreamJob):
                result = asyncio.run(_run_stream(job, conn))
            elif isinstance(job, BatchJob):
                result = asyncio.run(_run_batch(job, conn))
            else:
                result = asyncio.run(_run_create(job, conn, progress))
            conn.send(("result", result))
        except Exception as exc:  # reported to the pool, which raises it with context
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
