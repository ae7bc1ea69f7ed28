"""The in-memory session directory: sessions live as long as the process.

A dict from id to record (see seqserve.core.directory for the record and the
semantics); idle times come from the slabs' last-access columns, so expiry is
one comparison per lookup and a vectorised pass per slab for a sweep.
"""

from __future__ import annotations

import collections
import logging
import operator
import secrets
import sys
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np

from seqserve.core import validation
from seqserve.core.directory import ID, PRINCIPAL, SLOT, VERSION, Found, Session, unknown_session
from seqserve.core.errors import AlreadyExists, NotFound, ResourceExhausted, quoted
from seqserve.core.settings import CoreSettings
from seqserve.core.versions import ModelVersion
from seqserve.core.work import distinct

log = logging.getLogger(__name__)

_principal_of = operator.itemgetter(PRINCIPAL)
_version_of = operator.itemgetter(VERSION)
_slot_of = operator.itemgetter(SLOT)


class MemoryDirectory:
    """Every open session of one process, by id."""

    def __init__(
        self,
        versions: Sequence[ModelVersion],
        settings: CoreSettings,
        clock: Callable[[], float],
    ) -> None:
        self._versions = versions
        self._clock = clock
        self._ttl = settings.session_ttl_s
        self._max_sessions = settings.max_sessions
        self._sessions: dict[str, Session] = {}
        self._held: collections.Counter[str] = collections.Counter()  # open sessions by principal
        self._evicted = 0
        self.on_close: Callable[[Session], None] | None = None

    @property
    def ttl_s(self) -> float:
        return self._ttl

    @property
    def evicted(self) -> int:
        return self._evicted

    def __len__(self) -> int:
        return len(self._sessions)

    def held_by(self, principal: str) -> int:
        return self._held[principal]

    def create(self, version: ModelVersion, session_id: str | None, principal: str) -> Session:
        if session_id:
            validation.session_id(session_id)
            existing = self._sessions.get(session_id)
            if existing is not None and not self._expire_if_idle(existing):
                raise AlreadyExists(f"session {session_id!r} already exists")
        else:
            session_id = secrets.token_hex(16)  # 128 bits
        if len(self._sessions) >= self._max_sessions:
            self.sweep()
            if len(self._sessions) >= self._max_sessions:
                raise ResourceExhausted(
                    f"too many sessions: {len(self._sessions)} open, "
                    f"max_sessions={self._max_sessions}; close idle ones"
                )
        slot = version.slab.alloc(self._clock())
        s: Session = (session_id, sys.intern(principal), version.index, slot)
        version.slab.owners[slot] = s
        self._sessions[session_id] = s
        self._held[s[PRINCIPAL]] += 1
        return s

    def lookup(self, session_id: str, principal: str) -> Session:
        s = self._sessions.get(session_id)
        if s is None or s[PRINCIPAL] != principal:
            raise unknown_session(session_id, self._ttl)
        if self._expire_if_idle(s):
            raise NotFound(f"session {quoted(session_id)} expired after {self._ttl:g} s idle")
        return s

    def lookup_many(self, session_ids: Sequence[str], principal: str) -> Found:
        n = len(session_ids)
        found: list[Session | None] = list(map(self._sessions.get, session_ids))
        known = cast(list[Session], found)  # checked next: no None in it
        if None not in found and set(map(_principal_of, known)) == {principal}:
            # The common batch: every session known and the caller's. C-level passes only.
            recs = found
            versions = np.fromiter(map(_version_of, known), np.int64, n)
            slots = np.fromiter(map(_slot_of, known), np.int64, n)
        else:
            recs = [r if r is not None and r[PRINCIPAL] == principal else None for r in found]
            versions = np.fromiter((-1 if r is None else r[VERSION] for r in recs), np.int64, n)
            slots = np.fromiter((-1 if r is None else r[SLOT] for r in recs), np.int64, n)
        now = self._clock()
        for v in distinct(versions[versions >= 0]).tolist():
            rows = np.flatnonzero(versions == v)
            idle = now - self._versions[v].slab.last_access[slots[rows]] > self._ttl
            for i in rows[idle].tolist():  # expired: evicted now, unknown from here on
                expired = recs[i]
                assert expired is not None
                self._evict(expired)
                self._evicted += 1
                self._versions[v].expired += 1
                recs[i], versions[i], slots[i] = None, -1, -1
        return recs, versions, slots

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def is_open(self, session: Session) -> bool:
        return self._versions[session[VERSION]].slab.owners[session[SLOT]] is session

    def close(self, session: Session) -> None:
        self._evict(session)

    def sweep(self) -> int:
        cutoff = self._clock() - self._ttl
        evicted = 0
        for version in self._versions:
            owners = version.slab.owners
            for slot in version.slab.idle_since(cutoff).tolist():
                s = owners[slot]
                if s is not None:
                    self._evict(s)
                    evicted += 1
                    version.expired += 1
        if evicted:
            self._evicted += evicted
            log.info("evicted %d sessions idle for more than %g s", evicted, self._ttl)
        return evicted

    def _expire_if_idle(self, s: Session) -> bool:
        slab = self._versions[s[VERSION]].slab
        if self._clock() - float(slab.last_access[s[SLOT]]) > self._ttl:
            self._evict(s)
            self._evicted += 1
            self._versions[s[VERSION]].expired += 1
            return True
        return False

    def _evict(self, s: Session) -> None:
        del self._sessions[s[ID]]
        left = self._held[s[PRINCIPAL]] - 1
        if left:
            self._held[s[PRINCIPAL]] = left
        else:
            del self._held[s[PRINCIPAL]]  # a principal with none is not kept
        self._versions[s[VERSION]].slab.free(s[SLOT])
        if self.on_close is not None:
            self.on_close(s)
