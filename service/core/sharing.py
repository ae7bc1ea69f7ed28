"""Shared sessions: one store that every replica serves from (seqserve.store.redis).

The store is the system of record; a replica's slabs are a write-through
cache of the sessions it has served. Routing (a proxy hashing on the session
header, or client-side ring hash) keeps a session on one replica for
locality, but correctness never depends on it:

- A replica asked for a session it does not hold loads its row from the
  store (`ensure`); so does one whose copy may be stale: idle past the TTL,
  or asked for a position beyond its own with nothing of it in flight.
- Every change is written before it is answered, as a compare-and-set: a
  step's new row only if the stored session is still at the position the
  step started from, a create only if the id is free, a reset only if the
  session exists (seqserve.store.redis has the script). Writes are
  group-committed: what rounds produce while one write is in flight goes in
  the next.
- A write whose condition fails means another replica changed the session
  first. This replica drops its copy (`evict`), and the steps it answered
  from that copy fail with UNAVAILABLE: not applied here, so a client
  retries them, and the retry, served from the fresh row, is applied or
  answered again from the session's retained answers (exactly once, by
  position). Two replicas racing on one position: one is applied, the other
  answered UNAVAILABLE and then, on its retry, either answered again (same
  request) or refused with FAILED_PRECONDITION (another request).
- A replica that dies mid-round leaves the store at the session's last
  acknowledged step or one after it that was written but never answered;
  any replica continues from there at once: there is no lease to wait for.
- A store that cannot be reached fails the waiting steps with UNAVAILABLE
  and drops the sessions they touched from the cache (their fate is not
  known); the server keeps serving and recovers when the store does.
- Idle sessions expire in the store (the key's TTL, renewed on each write);
  evicting a cached copy never deletes anything there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import cast

import numpy as np

from seqserve.core import records
from seqserve.core.cas import CREATE, DELETE, EXISTING, Op
from seqserve.core.directory import SLOT, VERSION, Session, SessionDirectory
from seqserve.core.errors import (
    FailedPrecondition,
    Unavailable,
)
from seqserve.core.groupcommit import GroupCommit, SharedStore
from seqserve.core.records import SessionRow, decode_row, encode_row
from seqserve.core.snapshots import check_shapes, install, snapshot, snapshot_rows
from seqserve.core.versions import ModelVersion

log = logging.getLogger(__name__)

_version, _slot = itemgetter(VERSION), itemgetter(SLOT)


class Sharing:
    """What the session manager does differently with a shared store."""

    def __init__(
        self,
        store: SharedStore,
        versions: list[ModelVersion],
        ttl_s: float,
        mono: Callable[[], float],
        max_sessions: int = 100_000,
    ) -> None:
        self.store = store
        self.max_sessions = max_sessions  # copies this server keeps (the store keeps all)
        self.versions = versions
        self.ttl_s = ttl_s
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.mono = mono
        self._directory: SessionDirectory | None = None
        self._by_label: dict[str, ModelVersion] = {}  # from open: versions come after
        self._writes = GroupCommit(store, self.ttl_ms, self.evict)
        self._loading: dict[str, asyncio.Future[None]] = {}
        # Figures for tests and metrics.
        self.loads = 0
        self.dropped = 0  # copies dropped to make room
        self.write_seconds = self._writes.write_seconds

    # --- lifecycle -----------------------------------------------------------------------

    async def open(self, directory: SessionDirectory) -> None:
        self._directory = directory
        self._by_label = {v.label: v for v in self.versions}
        directory.on_close = None  # a cached copy going never deletes the stored session
        await self.store.open()
        self._writes.start()
        log.info("store %s: sessions shared with every server that uses it", self.store.name)

    async def close(self) -> None:
        await self._writes.stop()  # what was applied is written before closing
        await self.store.close()

    @property
    def conflicts(self) -> int:
        """Steps refused because another server changed their session first."""
        return self._writes.conflicts

    # --- the cache ------------------------------------------------------------------------

    async def ensure(
        self, session_id: str, position: int | None = None, *, latest: bool = False
    ) -> None:
        """Make this replica's copy of the session current enough to serve the request:
        at `position` if given, the store's latest if `latest` (a read: info, forecast)."""
        if not self.stale(session_id, position, latest=latest):
            return
        assert self._directory is not None
        cached = self._directory.get(session_id)
        loading = self._loading.get(session_id)
        if loading is None:
            loading = asyncio.get_running_loop().create_future()
            self._loading[session_id] = loading
            try:
                await self._load(session_id, cached)
            except BaseException as exc:
                loading.set_exception(exc)
                loading.exception()  # retrieved: the other waiters see it
                raise
            else:
                loading.set_result(None)
            finally:
                del self._loading[session_id]
        else:
            await asyncio.shield(loading)

    def stale(self, session_id: str, position: int | None = None, *, latest: bool = False) -> bool:
        """Whether this server's copy is missing or may be older than the store's."""
        directory = self._directory
        assert directory is not None, "the shared store is not open"
        s = directory.get(session_id)
        return s is None or not self._fresh(s, position, latest)

    def stale_many(self, session_ids: Sequence[str], at: list[int] | None) -> dict[str, int | None]:
        """`stale` of a batch's sessions (item i expected at at[i], if given): the stale
        ones, each with the position to load it at."""
        common = self._on_one_version(session_ids)
        if common is not None:
            # The usual batch: none idle past the TTL, none asked beyond its position.
            # Checked columnwise; anything else, one by one.
            slab, found = common[0].slab, common[1]
            slots = np.fromiter(map(_slot, found), np.int64, len(found))
            fresh = not (self.mono() - slab.last_access[slots] > self.ttl_s).any()
            if fresh and at is not None:
                asked = np.asarray(at[: len(found)], np.int64)
                fresh = not (asked > slab.position[slots[: len(asked)]]).any()
            if fresh:
                return {}
        stale: dict[str, int | None] = {}
        for i, sid in enumerate(session_ids):
            where = None if at is None or i >= len(at) else at[i]
            if sid not in stale and self.stale(sid, where):
                stale[sid] = where
        return stale

    def _on_one_version(
        self, session_ids: Sequence[str]
    ) -> tuple[ModelVersion, list[Session]] | None:
        """The sessions, if every one is cached here and all on one version (a round's
        are, a batch's usually): what the columnar paths need. Otherwise None."""
        directory = self._directory
        assert directory is not None, "the shared store is not open"
        sessions = list(map(directory.get, session_ids))
        if not sessions or None in sessions:
            return None
        found = cast(list[Session], sessions)
        versions = set(map(_version, found))
        return (self.versions[versions.pop()], found) if len(versions) == 1 else None

    def _fresh(self, s: Session, position: int | None, latest: bool) -> bool:
        version = self.versions[s[VERSION]]
        slab, slot = version.slab, s[SLOT]
        if self.mono() - float(slab.last_access[slot]) > self.ttl_s:
            return False  # idle here: another replica may have served it since
        if latest:
            return version.batcher.busy(slot)  # read it again, unless it is being stepped here
        if position is None or position <= int(slab.position[slot]):
            return True
        # Asked for a position beyond ours: stale, unless steps of it are on their way here.
        return version.batcher.busy(slot)

    async def _load(self, session_id: str, cached: Session | None) -> None:
        directory = self._directory
        assert directory is not None
        try:
            data = await self.store.load(session_id)
        except Exception as exc:
            log.warning(
                "store %s: a read failed (%s: %s)", self.store.name, type(exc).__name__, exc
            )
            raise Unavailable(
                f"the session store is unavailable ({type(exc).__name__}): retry"
            ) from exc
        s = directory.get(session_id)
        if s is not None:
            if s is not cached:
                return  # created or loaded here while the store answered
            self.evict(session_id)
        if data is None:
            return  # nothing stored: the lookup that follows says NOT_FOUND
        row = decode_row(data)
        version = self._by_label.get(row.label)
        if version is None:
            raise FailedPrecondition(
                f"session {session_id!r} is on model version {row.label}, which this server "
                "does not serve"
            )
        problem = check_shapes(version, row)
        if problem is not None:
            raise FailedPrecondition(f"session {session_id!r} cannot be served here: {problem}")
        self.make_room()
        s = directory.create(version, session_id, row.principal)
        install(version, s[SLOT], row, self.mono(), time.time())
        version.slab.moved.pop(session_id, None)
        self.loads += 1

    def make_room(self) -> None:
        """At the cap, drop the least recently used copies that nothing is using here (a
        percent of the cap at a time). The store holds them (every change is written
        through), so the next call for one loads it again."""
        directory = self._directory
        assert directory is not None
        if len(directory) < self.max_sessions:
            return
        want = max(1, self.max_sessions // 100)
        oldest: list[tuple[float, int, int]] = []  # (last access, version index, slot)
        for v in self.versions:
            # (allocated slots,): never-used slots are left out, freed ones sit at +inf
            last = v.slab.last_access[: len(v.slab.owners)]
            k = min(want, len(last))
            if k:
                for slot in np.argpartition(last, k - 1)[:k].tolist():
                    oldest.append((float(last[slot]), v.index, slot))
        dropped = 0
        for _, index, slot in sorted(oldest):
            version = self.versions[index]
            owner = version.slab.owners[slot]
            if owner is None or version.batcher.busy(slot):
                continue
            directory.close(owner)
            dropped += 1
            if dropped == want:
                break
        self.dropped += dropped

    def evict(self, session_id: str) -> None:
        """Drop this replica's copy (it may be stale); the store keeps the session."""
        directory = self._directory
        assert directory is not None
        s = directory.get(session_id)
        if s is None:
            return
        slab = self.versions[s[VERSION]].slab
        slab.mark_moved(session_id)
        directory.close(s)

    # --- writes ---------------------------------------------------------------------------

    def row(self, s: Session) -> bytes:
        version = self.versions[s[VERSION]]
        return encode_row(snapshot(version, s, self.mono(), time.time()))

    def added(self, version: ModelVersion) -> None:
        """A version loaded by a reload: sessions stored under its label load onto it."""
        self._by_label[version.label] = version

    def unloaded(self, version: ModelVersion) -> None:
        """A removed version is gone: sessions stored under its label no longer load here."""
        if self._by_label.get(version.label) is version:
            del self._by_label[version.label]

    def created(self, s: Session, label: str) -> asyncio.Future[None]:
        del label
        return self._add([(s[0], CREATE, 0, self.row(s))], "create")

    def imported(self, s: Session, row: SessionRow) -> asyncio.Future[None]:
        return self._add([(s[0], CREATE, row.position, self.row(s))], "create")

    def reset(self, s: Session) -> asyncio.Future[None]:
        return self._add([(s[0], EXISTING, 0, self.row(s))], "reset")

    def closed(self, session_id: str) -> asyncio.Future[None]:
        return self._add([(session_id, DELETE, 0, b"")], "close")

    def append(self, record: bytes) -> asyncio.Future[None]:
        """A round's applied steps (a STEPS record): each session's new row, by CAS."""
        directory = self._directory
        assert directory is not None
        ids, starts, t = records.steps_of(record)  # the arrays are not needed: the rows are
        mono, wall = self.mono(), time.time()
        common = self._on_one_version(ids)
        if common is not None:  # the usual round: C-level passes, not the loop below
            rows = snapshot_rows(common[0], common[1], mono, wall)
            ends = [start + t for start in starts]
            return self._add(list(zip(ids, starts, ends, rows, strict=True)), "steps")
        ops: list[Op] = []
        live: dict[int, list[tuple[int, Session]]] = {}  # version -> (op index, session)
        for sid, start in zip(ids, starts, strict=True):
            s = directory.get(sid)
            if s is not None:
                live.setdefault(s[VERSION], []).append((len(ops), s))
            # An evicted session (since its round committed) keeps the empty row: nothing
            # to write, not answered.
            ops.append((sid, start, start + t, b""))
        for v, members in live.items():  # a round's sessions share a version: one call
            rows = snapshot_rows(self.versions[v], [s for _, s in members], mono, wall)
            for (i, _), row in zip(members, rows, strict=True):
                sid, expect, position, _ = ops[i]
                ops[i] = (sid, expect, position, row)
        return self._add(ops, "steps")

    def barrier(self) -> asyncio.Future[None] | None:
        """Done once everything added so far is written (whatever each op's outcome)."""
        return self._writes.barrier()

    def _add(self, ops: list[Op], kind: str) -> asyncio.Future[None]:
        return self._writes.add(ops, kind)
