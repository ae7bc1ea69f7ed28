"""The journal: records of what the core applied, written to a durable store in order.

Every change to a session (a round's steps, a create, reset, close or
import) is applied in memory first and then appended here; its answer is
sent only once the record, and every record before it, is durable. Records
are group-committed: while one write is in flight the next ones gather and
go in one write after it, so a round of a thousand steps costs one store
write, and a single step one write of a few dozen bytes.

A session's next step may run before its previous step's record is
durable: the store always holds a prefix of what was applied, which is a
consistent earlier state. A write that fails breaks that promise for
everything after it, so the journal fails every record not yet durable with
UNAVAILABLE and reports the failure once (`on_failure`): the server then
stops, and a restart recovers what the store holds (crash-only, as a
database does when its log cannot be written).

The store behind it is a `LogStore` (seqserve.store implements them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from seqserve.core.errors import Unavailable
from seqserve.core.figures import STORE_SECONDS, Histogram

log = logging.getLogger(__name__)


class StoreError(Exception):
    """A store that cannot be opened or used; the message says which and why."""


@dataclass(frozen=True)
class Stored:
    """What a store holds when it opens: the rows of its last checkpoint, the records after."""

    rows: list[bytes]
    records: list[tuple[int, bytes]]  # (sequence number, record), in order
    next_seq: int  # the number the next record gets


class RoundLog(Protocol):
    """What rounds write their applied steps to (a Journal, or seqserve.core.sharing)."""

    def append(self, record: bytes) -> asyncio.Future[None]:
        """Make a record durable; the future fails if it cannot be (or was refused)."""
        ...

    def barrier(self) -> asyncio.Future[None] | None:
        """Done once everything appended so far is written (None: it is)."""
        ...


class LogStore(Protocol):
    """A durable store as the journal and checkpoints use it."""

    @property
    def name(self) -> str:
        """Where it is, for logs and errors (no secrets)."""
        ...

    async def open(self) -> Stored: ...

    async def append(self, records: list[tuple[int, bytes]]) -> None:
        """Make the records durable, all or none; a record appended twice is kept once."""
        ...

    def append_now(self, records: list[tuple[int, bytes]]) -> bool:
        """`append` on the caller's thread when that is quicker than a hop; False: not done."""
        ...

    async def save(self, rows: list[tuple[str, bytes]], deleted: list[str]) -> None:
        """Write session rows (by id) and delete sessions, all or none."""
        ...

    async def truncate(self, upto: int) -> None:
        """Drop the records numbered <= upto: the saved rows include what they did."""
        ...

    async def close(self) -> None: ...


_Pending = tuple[int, bytes, "asyncio.Future[None]"]  # (sequence number, record, its future)


class Journal:
    """Appends records in order; each append's future resolves once it is durable."""

    def __init__(self, store: LogStore, on_failure: Callable[[BaseException], None]) -> None:
        self._store = store
        self._seq = 0  # the last number handed out
        self._on_failure = on_failure
        self._pending: list[_Pending] = []
        self._last: asyncio.Future[None] | None = None  # the newest record's future
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._writing = False  # a write is in flight in the writer task
        self.failure: BaseException | None = None
        self.write_seconds = Histogram(STORE_SECONDS)  # each store write, for metrics
        self.writes = 0  # store writes made (one per group commit)
        self.records = 0  # records written

    @property
    def seq(self) -> int:
        """The number of the last record appended (durable or not)."""
        return self._seq

    def start(self, next_seq: int) -> None:
        """Begin writing, numbering records from `next_seq` (what the store holds is below)."""
        self._seq = next_seq - 1
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write_forever(), name="journal writer")

    def append(self, record: bytes) -> asyncio.Future[None]:
        """Queue a record; the future resolves when it is durable (Unavailable if it cannot be)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.failure is not None:
            future.set_exception(self._unavailable())
            future.exception()  # retrieved: whoever waits on it sees it, nobody must
            return future
        self._seq += 1
        self._last = future
        if not self._pending and not self._writing:
            # Nothing queued before it: a store that writes a small record faster than
            # a thread hop takes it now, and the answer goes without a loop pass.
            try:
                began = time.perf_counter()
                if self._store.append_now([(self._seq, record)]):
                    self.write_seconds.observe(time.perf_counter() - began)
                    self.writes += 1
                    self.records += 1
                    future.set_result(None)
                    return future
            except Exception as exc:
                self._fail(exc, [(self._seq, record, future)])
                return future
        self._pending.append((self._seq, record, future))
        assert self._wake is not None, "the journal is not started"
        self._wake.set()
        return future

    def barrier(self) -> asyncio.Future[None] | None:
        """What to wait for before an answer that reflects everything applied so far."""
        last = self._last
        if last is not None and last.done() and self.failure is None:
            return None
        return last

    async def close(self) -> None:
        """Write what is pending, then stop."""
        last = self._last
        if last is not None and not last.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(last)
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None

    async def _write_forever(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                self._writing = True
                began = time.perf_counter()
                try:
                    await self._store.append([(seq, record) for seq, record, _ in batch])
                    self.write_seconds.observe(time.perf_counter() - began)
                except Exception as exc:
                    self._fail(exc, batch)
                    return
                finally:
                    self._writing = False
                self.writes += 1
                self.records += len(batch)
                for _, _, future in batch:
                    if not future.done():
                        future.set_result(None)

    def _unavailable(self) -> Unavailable:
        return Unavailable(
            f"the session store {self._store.name} could not be written "
            f"({type(self.failure).__name__}); the server is stopping: retry on another "
            "or after it restarts"
        )

    def _fail(self, exc: BaseException, batch: list[_Pending]) -> None:
        self.failure = exc
        log.critical("the session store %s failed", self._store.name, exc_info=exc)
        err = self._unavailable()
        for _, _, future in [*batch, *self._pending]:
            if not future.done():
                future.set_exception(err)
                future.exception()  # retrieved: whoever waits on it sees it, nobody must
        self._pending = []
        self._on_failure(exc)
