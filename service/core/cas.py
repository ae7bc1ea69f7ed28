"""The operations of a shared store (seqserve.core.sharing): one compare-and-set per session.

Kept apart from the sharing logic so that a store's module imports no more than
these names (the settings check a --store value without loading numpy).
"""

from __future__ import annotations

# The condition of a write: a position (the session must be there), or one of these.
CREATE = -1  # the id must be free
EXISTING = -2  # the session must exist
DELETE = -3  # unconditional delete

# (session id, condition, the new position, the new row)
Op = tuple[str, int, int, bytes]

# What became of each op.
CONFLICT = 0  # its condition did not hold
APPLIED = 1
MISSING = 2  # a step's session is not in the store (closed or expired elsewhere)
