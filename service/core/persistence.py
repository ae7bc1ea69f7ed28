"""What the session manager's store does with each session change: one seam, three kinds.

Without a store, nothing is written and nothing waited for. A durable store
(seqserve.core.durability) journals each change, and an answer waits for
everything journaled before it (its barrier). A shared store
(seqserve.core.sharing) writes each change through, an answer waits for that
change's own write, and a session another replica changed is loaded before
it is used. The manager calls one `Persistence` and never asks which kind it
holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import numpy.typing as npt

from seqserve.core.catalog import Catalog
from seqserve.core.directory import ID, Session, SessionDirectory
from seqserve.core.durability import Durability
from seqserve.core.figures import Histogram
from seqserve.core.groupcommit import SharedStore
from seqserve.core.journal import LogStore, RoundLog
from seqserve.core.records import SessionRow
from seqserve.core.settings import CoreSettings
from seqserve.core.sharing import Sharing
from seqserve.core.versions import ModelVersion

# One change's write to wait for; None: wait for the store's barrier instead.
Written = asyncio.Future[None] | None


class Persistence:
    """No store: every change is final once made in memory."""

    journal: RoundLog | None = None  # what rounds write their applied steps to
    durability: Durability | None = None
    sharing: Sharing | None = None

    def attach(self, catalog: Catalog) -> None:
        """Hear of versions served and retired after start."""

    async def open(self, directory: SessionDirectory) -> None:
        """Recover or connect before the batchers start."""

    async def close(self) -> None:
        """Write what is pending and let go of the store."""

    def figures(self) -> tuple[str, Histogram] | None:
        """The store's name and its writes' seconds."""
        return None

    def make_room(self) -> None:
        """Before a session is added here: drop cached ones over the cap."""

    def created(self, s: Session, label: str) -> Written:
        return None

    def reset(self, s: Session) -> Written:
        return None

    def closed(self, session_id: str) -> Written:
        return None

    def imported(self, s: Session, row: SessionRow) -> Written:
        return None

    async def ensure(self, session_id: str, position: int | None, latest: bool) -> None:
        """Make this server's copy of a session current before it is used."""

    async def ensure_many(
        self, session_ids: Sequence[str], positions: Sequence[int] | npt.ArrayLike | None
    ) -> None:
        """`ensure` for a batch's sessions, all at once."""

    def barrier(self) -> asyncio.Future[None] | None:
        """Done once every change made so far is durable; None: already."""
        return None


class Journaled(Persistence):
    """A durable store: changes journaled, answers after the barrier."""

    def __init__(self, durability: Durability) -> None:
        self._d = self.durability = durability
        self.journal = durability.journal

    async def open(self, directory: SessionDirectory) -> None:
        await self._d.open(directory)  # recovery runs the models itself, before any batcher
        directory.on_close = self._d.closed

    async def close(self) -> None:
        await self._d.close()

    def figures(self) -> tuple[str, Histogram] | None:
        return self._d.store.name, self._d.journal.write_seconds

    def created(self, s: Session, label: str) -> Written:
        self._d.created(s, label)
        return None

    def reset(self, s: Session) -> Written:
        self._d.reset(s[ID])
        return None

    def imported(self, s: Session, row: SessionRow) -> Written:
        self._d.imported(row)
        return None

    def barrier(self) -> asyncio.Future[None] | None:
        return self._d.barrier()


class Shared(Persistence):
    """A shared store: each change written through, sessions loaded when stale here."""

    def __init__(self, sharing: Sharing) -> None:
        self._s = self.sharing = sharing
        self.journal = sharing

    def attach(self, catalog: Catalog) -> None:
        catalog.on_added, catalog.on_unloaded = self._s.added, self._s.unloaded

    async def open(self, directory: SessionDirectory) -> None:
        await self._s.open(directory)

    async def close(self) -> None:
        await self._s.close()

    def figures(self) -> tuple[str, Histogram] | None:
        return self._s.store.name, self._s.write_seconds

    def make_room(self) -> None:
        self._s.make_room()

    def created(self, s: Session, label: str) -> Written:
        return self._s.created(s, label)

    def reset(self, s: Session) -> Written:
        return self._s.reset(s)

    def closed(self, session_id: str) -> Written:
        return self._s.closed(session_id)

    def imported(self, s: Session, row: SessionRow) -> Written:
        return self._s.imported(s, row)

    # No barrier: each change's answer waits for its own write, not for the others.

    async def ensure(self, session_id: str, position: int | None, latest: bool) -> None:
        await self._s.ensure(session_id, position, latest=latest)

    async def ensure_many(
        self, session_ids: Sequence[str], positions: Sequence[int] | npt.ArrayLike | None
    ) -> None:
        at = None if positions is None else np.asarray(positions, np.int64).tolist()
        stale = self._s.stale_many(session_ids, at)
        if stale:
            await asyncio.gather(*(self._s.ensure(k, w) for k, w in stale.items()))


def persistence(
    store: LogStore | SharedStore | None,
    versions: list[ModelVersion],
    settings: CoreSettings,
    clock: Callable[[], float],
    on_failure: Callable[[BaseException], None],
) -> Persistence:
    """The kind of persistence a store asks for (None: none)."""
    if store is None:
        return Persistence()
    if getattr(store, "shared", False):
        shared = cast(SharedStore, store)
        return Shared(
            Sharing(shared, versions, settings.session_ttl_s, clock, settings.max_sessions)
        )
    log_store = cast(LogStore, store)
    return Journaled(Durability(log_store, versions, settings.session_ttl_s, clock, on_failure))
