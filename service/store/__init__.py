"""Where sessions live: the core's session directory, and the durable stores behind it.

    memory             in the process only: nothing survives a restart (the default)
    sqlite:PATH        an embedded SQLite file (seqserve.store.sqlite)
    redis://HOST:PORT  a Redis server shared by replicas (seqserve.store.redis, the `redis` extra)

`open_store` turns a `--store` value into the store the core uses: a journal's
store (SQLite), a shared store (Redis), or None for memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # settings parse --store with this module: it stays light
    from seqserve.core.groupcommit import SharedStore
    from seqserve.core.journal import LogStore

KINDS = ("memory", "sqlite:PATH", "redis://HOST:PORT/DB")


def check(spec: str) -> str:
    """A valid --store value, or ValueError saying what was expected."""
    if spec == "memory":
        return spec
    if spec.startswith("sqlite:"):
        from seqserve.store.sqlite import parse

        parse(spec)
        return spec
    if spec.startswith(("redis://", "rediss://", "unix://")):
        from seqserve.store.redis import parse as parse_redis

        parse_redis(spec)
        return spec
    raise ValueError(f"expected a store among {', '.join(KINDS)}, got {spec!r}")


def open_store(spec: str) -> LogStore | SharedStore | None:
    """The durable store a --store value names (not yet opened), or None for memory."""
    check(spec)
    if spec == "memory":
        return None
    if spec.startswith("sqlite:"):
        from seqserve.store.sqlite import SqliteStore

        return SqliteStore(spec)
    from seqserve.store.redis import RedisStore

    return RedisStore(spec)
