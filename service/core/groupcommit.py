"""A shared store's writes, group-committed (seqserve.core.sharing writes through them).

What rounds, creates, resets and closes hand over while one write is in
flight goes into the next: one store call carries every op pending, in
order, and each handed-over batch of ops learns its own outcome. An op whose
condition failed (another server changed the session first) or whose fate is
unknown (the store failed) has its session's cached copy dropped here, by the
`evict` the owner gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from seqserve.core.cas import APPLIED, CONFLICT, DELETE, MISSING, Op
from seqserve.core.errors import AlreadyExists, NotFound, SeqServeError, Unavailable
from seqserve.core.figures import STORE_SECONDS, Histogram

log = logging.getLogger(__name__)


class SharedStore(Protocol):
    """A store several servers use at once, one compare-and-set per session."""

    @property
    def name(self) -> str: ...

    async def open(self) -> None: ...

    async def load(self, session_id: str) -> bytes | None:
        """The session's row, or None if there is none (never created, closed, expired)."""
        ...

    async def write(self, ops: list[Op], ttl_ms: int) -> list[int]:
        """Apply each op whose condition holds, in order: APPLIED, CONFLICT or MISSING each."""
        ...

    async def close(self) -> None: ...


class _Pending:
    __slots__ = ("future", "kind", "ops")

    def __init__(self, ops: list[Op], kind: str, future: asyncio.Future[None]) -> None:
        self.ops = ops
        self.kind = kind
        self.future = future


class GroupCommit:
    """One writer task over a shared store; `add` hands it ops, a future per call."""

    def __init__(self, store: SharedStore, ttl_ms: int, evict: Callable[[str], None]) -> None:
        self.store = store
        self.ttl_ms = ttl_ms
        self._evict = evict
        self._pending: list[_Pending] = []
        self._batch: asyncio.Future[None] | None = None  # done when the pending ops are written
        self._in_flight: asyncio.Future[None] | None = None
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        # Figures for tests and metrics.
        self.conflicts = 0
        self.writes = 0
        self.write_seconds = Histogram(STORE_SECONDS)

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write_forever(), name="shared store writer")

    async def stop(self) -> None:
        """Write what is pending, then end the writer."""
        if self._writer is None:
            return
        while self._pending or (self._in_flight is not None and not self._in_flight.done()):
            await asyncio.sleep(0.005)
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._writer = None

    def barrier(self) -> asyncio.Future[None] | None:
        """Done once everything added so far is written (whatever each op's outcome)."""
        if self._pending:
            return self._batch
        if self._in_flight is not None and not self._in_flight.done():
            return self._in_flight
        return None

    def add(self, ops: list[Op], kind: str) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self._wake is None:
            future.set_exception(Unavailable("the session store is not open"))
            future.exception()
            return future
        if not self._pending:
            self._batch = loop.create_future()
        self._pending.append(_Pending(ops, kind, future))
        self._wake.set()
        return future

    async def _write_forever(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                done, self._batch = self._batch, None
                self._in_flight = done
                ops = [op for p in batch for op in p.ops if op[3] or op[1] == DELETE]
                began = time.perf_counter()
                try:
                    applied = await self.store.write(ops, self.ttl_ms) if ops else []
                except Exception as exc:
                    self._store_failed(batch, exc)
                else:
                    self.write_seconds.observe(time.perf_counter() - began)
                    self.writes += 1
                    self._settle(batch, applied)
                if done is not None and not done.done():
                    done.set_result(None)

    def _settle(self, batch: list[_Pending], outcomes: list[int]) -> None:
        results = iter(outcomes)
        for p in batch:
            lost: list[str] = []
            missing = False
            for op in p.ops:
                outcome = next(results) if op[3] or op[1] == DELETE else CONFLICT
                if outcome != APPLIED:
                    lost.append(op[0])
                    missing = missing or outcome == MISSING
            if not lost:
                p.future.set_result(None)
                continue
            p.future.set_exception(self._refusal(p.kind, lost, missing))
            p.future.exception()  # retrieved: whoever waits on it sees it, nobody must
            if p.kind != "close":
                for sid in lost:
                    self._evict(sid)

    def _refusal(self, kind: str, lost: list[str], missing: bool) -> SeqServeError:
        sid = lost[0]
        if kind == "create":
            return AlreadyExists(f"session {sid!r} already exists")
        if kind == "reset" or missing:
            return NotFound(
                f"session {sid!r} was closed or expired on another server; the step was not applied"
            )
        self.conflicts += len(lost)
        return Unavailable(
            f"session {sid!r} was changed on another server while this step ran here; "
            "it was not applied: send it again"
        )

    def _store_failed(self, batch: list[_Pending], exc: BaseException) -> None:
        log.error("store %s: a write failed (%s: %s)", self.store.name, type(exc).__name__, exc)
        err = Unavailable(f"the session store is unavailable ({type(exc).__name__}): retry")
        for p in batch:
            p.future.set_exception(err)
            p.future.exception()
            for op in p.ops:  # their fate in the store is not known: reload when next asked
                if op[1] != DELETE:
                    self._evict(op[0])
