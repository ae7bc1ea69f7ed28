"""The session directory: which sessions exist, whose they are, and when they expire.

The interface the core calls to find sessions; seqserve.store implements it
(in memory today). A session is a lean record, a plain tuple of its id, its
principal, the index of its model version and its slot in that version's
slab; everything that changes (state, position, last access) lives in the
slab. A record is live while its slab slot's owner is this very tuple.

Semantics every directory keeps:
- Ids are client-chosen (1 to 128 printable characters) or minted with 128
  random bits. Ids are one namespace: a taken id answers ALREADY_EXISTS
  whoever holds it; every other call on another principal's session answers
  NOT_FOUND, with the message of an unknown id.
- A session idle (no step, forecast or reset) for longer than the TTL is
  evicted, lazily when it is next named and by a periodic `sweep`; it then
  answers NOT_FOUND.
- At the session cap, idle sessions are swept before RESOURCE_EXHAUSTED; the
  same holds for a principal at its quota (counted with `held_by`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, Protocol

import numpy as np
import numpy.typing as npt

from seqserve.core.errors import NotFound, quoted

if TYPE_CHECKING:
    from seqserve.core.settings import CoreSettings
    from seqserve.core.versions import ModelVersion

I64 = npt.NDArray[np.int64]

# (session id, principal, model version index, slot). A plain tuple of str and
# int on purpose: CPython's cyclic GC stops tracking such tuples, so a million
# idle sessions add nothing to its pauses (as __slots__ objects they made each
# full collection take ~0.5 s at a million sessions).
Session = tuple[str, str, int, int]
ID: Final = 0
PRINCIPAL: Final = 1
VERSION: Final = 2
SLOT: Final = 3

# Many sessions looked up at once: records (None where unknown, another
# principal's or expired), their version indices and slots (n,) (-1 there).
Found = tuple[list[Session | None], I64, I64]


def unknown_session(session_id: str, ttl_s: float) -> NotFound:
    """The error for a session the caller cannot see, on every path (one message)."""
    return NotFound(
        f"unknown session {quoted(session_id)} (never created, closed, or expired after "
        f"{ttl_s:g} s idle)"
    )


class SessionDirectory(Protocol):
    """Ids, principals, TTL and lookup of every open session."""

    # Called with each session that goes (closed, expired), after it is gone.
    on_close: Callable[[Session], None] | None

    @property
    def ttl_s(self) -> float: ...

    @property
    def evicted(self) -> int:
        """Sessions evicted for idleness since start."""
        ...

    def __len__(self) -> int: ...

    def held_by(self, principal: str) -> int:
        """Open sessions of one principal (the per-principal quota counts these)."""
        ...

    def create(self, version: ModelVersion, session_id: str | None, principal: str) -> Session:
        """A new session in a zeroed slot of `version` (a minted id when none is given)."""
        ...

    def lookup(self, session_id: str, principal: str) -> Session:
        """The caller's open session, or NotFound (unknown, another principal's, expired)."""
        ...

    def lookup_many(self, session_ids: Sequence[str], principal: str) -> Found:
        """`lookup` for many ids at once; no error is raised for any of them."""
        ...

    def get(self, session_id: str) -> Session | None:
        """The record under an id, whoever holds it, expired or not (introspection)."""
        ...

    def is_open(self, session: Session) -> bool:
        """Whether this record is still the live one (not closed, expired or replaced)."""
        ...

    def close(self, session: Session) -> None:
        """Remove a session and free its slot; its queued and running steps fail."""
        ...

    def sweep(self) -> int:
        """Evict every session idle for longer than the TTL; how many were evicted."""
        ...


# What builds a directory over the served versions: the server chooses one.
DirectoryFactory = Callable[
    ["Sequence[ModelVersion]", "CoreSettings", Callable[[], float]], SessionDirectory
]
