"""The client processes: spawned once per run, reused by every load loop.

Clients run in their own processes so that they do not share the server's (or
each other's) interpreter lock; the pool splits a job across them, starts
them together and merges what they measured.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import numpy as np

from seqserve.bench.drivers import BatchJob, CreateJob, Job, LoadResult, StreamJob, worker

START_DELAY_S = 0.05  # between the last "ready" and the common start
JOB_GRACE_S = 60.0  # setup and teardown allowed beyond a job's own time bound


class ClientPool:
    def __init__(self, processes: int) -> None:
        ctx = mp.get_context("spawn")  # grpc must not be forked after it has started
        self._conns: list[Connection] = []
        self._procs: list[BaseProcess] = []
        self.progress: list[Synchronized[int]] = []
        for i in range(processes):
            parent, child = ctx.Pipe()
            counter: Synchronized[int] = ctx.Value("q", 0, lock=False)
            proc = ctx.Process(
                target=worker, args=(child, counter), name=f"bench-client-{i}", daemon=True
            )
            proc.start()
            self._conns.append(parent)
            self._procs.append(proc)
            self.progress.append(counter)

    @property
    def size(self) -> int:
        return len(self._procs)

    def run(
        self,
        job: Job,
        processes: int | None = None,
        on_wait: Callable[[], None] | None = None,
        probe: Callable[[], tuple[float, ...]] | None = None,
    ) -> LoadResult:
        """Split `job` over `processes` clients, start them together, merge their results.

        `probe` (e.g. the server's CPU seconds) is read as the measured window opens
        and closes; the difference lands in the result's `probe_delta`.
        """
        parts = split_job(job, min(processes or self.size, self.size))
        conns = self._conns[: len(parts)]
        for counter in self.progress:
            counter.value = 0
        for conn, part in zip(conns, parts, strict=True):
            conn.send(part)
        for conn in conns:
            kind, payload = self._recv(conn, JOB_GRACE_S, None)
            if kind != "ready":
                raise RuntimeError(f"client process failed while preparing {job}: {payload}")
        start_ns = time.monotonic_ns() + int(START_DELAY_S * 1e9)
        for conn in conns:
            conn.send(start_ns)
        delta = None
        if probe is not None and not isinstance(job, CreateJob):
            window_ns = start_ns + int(job.warmup_s * 1e9)
            _sleep_until(window_ns)
            before = probe()
            _sleep_until(window_ns + int(job.window_s * 1e9))
            delta = tuple(b - a for a, b in zip(before, probe(), strict=True))
        results = []
        deadline = _time_bound(job) + JOB_GRACE_S
        for conn in conns:
            kind, payload = self._recv(conn, deadline, on_wait)
            if kind != "result":
                raise RuntimeError(f"client process failed while running {job}: {payload}")
            results.append(payload)
        merged = merge(results)
        merged.probe_delta = delta
        return merged

    def _recv(
        self, conn: Connection, timeout_s: float, on_wait: Callable[[], None] | None
    ) -> tuple[str, Any]:
        end = time.monotonic() + timeout_s
        while not conn.poll(0.25):
            if on_wait is not None:
                on_wait()
            if time.monotonic() > end:
                self.close()
                raise TimeoutError(f"client process gave no answer within {timeout_s:.0f} s")
        msg = conn.recv()
        assert isinstance(msg, tuple)
        return msg

    def close(self) -> None:
        for conn, proc in zip(self._conns, self._procs, strict=True):
            if proc.is_alive():
                with contextlib.suppress(BrokenPipeError, OSError):
                    conn.send(None)
                proc.join(2.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(2.0)
        self._procs = []
        self._conns = []

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sleep_until(t_ns: int) -> None:
    delay = (t_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


def _shares(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def split_job(job: Job, processes: int) -> list[Job]:
    """The job's share for each of up to `processes` clients (none gets an empty share)."""
    if isinstance(job, StreamJob):
        n = min(processes, job.streams)
        return [replace(job, streams=k) for k in _shares(job.streams, n)]
    if isinstance(job, BatchJob):
        n = min(processes, job.inflight)
        return [replace(job, inflight=k) for k in _shares(job.inflight, n)]
    n = min(processes, job.count)
    return [replace(job, count=k) for k in _shares(job.count, n)]


def _time_bound(job: Job) -> float:
    if isinstance(job, CreateJob):
        return job.budget_s
    return job.warmup_s + job.window_s


def merge(results: list[LoadResult]) -> LoadResult:
    """One result for the whole job (windows are common; counts and samples add up)."""
    return LoadResult(
        messages=sum(r.messages for r in results),
        items=sum(r.items for r in results),
        window_s=max((r.window_s for r in results), default=0.0),
        latencies_ns=np.concatenate([r.latencies_ns for r in results]),
        per_stream=np.concatenate([r.per_stream for r in results]),
        errors=sum(r.errors for r in results),
        error_samples=[s for r in results for s in r.error_samples][:5],
        created=sum(r.created for r in results),
        elapsed_s=max((r.elapsed_s for r in results), default=0.0),
    )
