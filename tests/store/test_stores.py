"""The durable stores keep the journal's contract: what they took comes back, once, in order.

Both run for real: a SQLite file, and a Redis server started for the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from seqserve.core.cas import APPLIED, CONFLICT, CREATE, DELETE, EXISTING, MISSING
from seqserve.core.journal import LogStore, StoreError
from seqserve.store import check, open_store
from seqserve.store.redis import RedisStore
from seqserve.store.sqlite import SqliteStore
from tests.store.conftest import RedisServer

Make = Callable[[], LogStore]


@pytest.fixture
def make(tmp_path: Path) -> Make:
    """A journal's store: SQLite (Redis is a shared store, tested below)."""
    return lambda: SqliteStore(f"sqlite:{tmp_path / 'store.db'}")


def test_records_rows_and_checkpoints_come_back(make: Make) -> None:
    async def main() -> None:
        store = make()
        first = await store.open()
        assert (first.rows, first.records, first.next_seq) == ([], [], 1)
        await store.append([(1, b"one"), (2, b"two")])
        await store.append([(2, b"two"), (3, b"three")])  # a write resent: kept once
        await store.save([("a", b"row-a"), ("b", b"row-b")], [])
        await store.save([("b", b"row-b2")], ["a"])
        await store.close()

        store = make()
        again = await store.open()
        assert again.records == [(1, b"one"), (2, b"two"), (3, b"three")]
        assert again.rows == [b"row-b2"]
        assert again.next_seq == 4
        await store.truncate(2)  # the rows now include what records 1 and 2 did
        await store.close()

        store = make()
        after = await store.open()
        assert after.records == [(3, b"three")] and after.next_seq == 4
        await store.truncate(3)
        await store.close()

        store = make()
        empty = await store.open()
        assert empty.records == [] and empty.next_seq == 4  # numbering goes on
        await store.close()

    asyncio.run(main())


def test_one_server_writes_a_sqlite_store_at_a_time(make: Make) -> None:
    async def main() -> None:
        first = make()
        await first.open()
        second = make()
        with pytest.raises(StoreError, match="in use by another server"):
            await second.open()
        await second.close()
        await first.close()
        third = make()  # the first gave it back
        await third.open()
        await third.close()

    asyncio.run(main())


def test_redis_writes_are_compare_and_set_per_session(redis_server: RedisServer) -> None:
    async def main() -> None:
        store = RedisStore(redis_server.url)
        await store.open()
        ttl = 60_000
        assert await store.write([("a", CREATE, 0, b"a0"), ("a", CREATE, 0, b"again")], ttl) == [
            APPLIED,
            CONFLICT,  # the id is taken
        ]
        assert await store.load("a") == b"a0"
        steps = [("a", 0, 3, b"a3"), ("a", 0, 3, b"other"), ("a", 3, 4, b"a4"), ("b", 0, 1, b"")]
        assert await store.write(steps, ttl) == [APPLIED, CONFLICT, APPLIED, MISSING]
        assert await store.load("a") == b"a4"
        assert await store.write([("a", EXISTING, 0, b"zero"), ("b", EXISTING, 0, b"z")], ttl) == [
            APPLIED,
            CONFLICT,  # no such session to reset
        ]
        assert await store.write([("a", 0, 1, b"a1")], ttl) == [APPLIED]  # from the reset
        assert await store.write([("a", DELETE, 0, b""), ("a", 1, 2, b"late")], ttl) == [
            APPLIED,
            MISSING,
        ]
        assert await store.load("a") is None
        await store.write([("short", CREATE, 0, b"s")], 200)  # the TTL is Redis's own expiry
        await asyncio.sleep(0.4)
        assert await store.load("short") is None
        await store.close()

    asyncio.run(main())


def test_redis_positions_stay_exact_past_a_doubles_precision(redis_server: RedisServer) -> None:
    """Positions travel to the script as text: 2**60 + 1 is not rounded to 2**60."""

    async def main() -> None:
        store = RedisStore(redis_server.url)
        await store.open()
        big = 2**60
        assert await store.write([("s", CREATE, big + 1, b"r1"), ("t", CREATE, 7, b"t")], 1000) == [
            APPLIED,
            APPLIED,
        ]
        assert await store.write([("s", big, big + 2, b"no"), ("t", 7, 8, b"t8")], 1000) == [
            CONFLICT,
            APPLIED,
        ]
        assert await store.write([("s", big + 1, big + 2, b"r2")], 1000) == [APPLIED]
        assert await store.load("s") == b"r2"
        await store.close()

    asyncio.run(main())


def test_redis_commands_packed_in_c_are_the_bytes_redis_py_packs() -> None:
    """The store's connections pack with hiredis; the bytes on the wire are redis-py's."""
    from redis.asyncio.connection import Connection

    from seqserve.store.redis import _packing_in_c

    plain, packed = Connection(), _packing_in_c(Connection)()
    commands: list[tuple[str | bytes | int | float, ...]] = [
        ("EVALSHA", "ab" * 20, 2, "seqserve:{a}", "seqserve:{é}", 60_000, "3 4 create 1", b"\x00r"),
        ("CONFIG GET", "appendonly"),  # a two-word command name: two arguments
        (b"HGET", b"seqserve:{a}", "row"),
        ("SET", "k", 2.5),
    ]
    for command in commands:
        assert b"".join(packed.pack_command(*command)) == b"".join(plain.pack_command(*command))


def test_a_redis_prefix_of_another_format_is_refused(redis_server: RedisServer) -> None:
    async def main() -> None:
        import redis.asyncio as aredis

        client = aredis.from_url(redis_server.url)
        await client.set("old:format", "seqserve.store/v0")
        await client.aclose()
        store = RedisStore(f"{redis_server.url}?prefix=old")
        with pytest.raises(StoreError, match=r"expected a store of format 'seqserve\.shared/v1'"):
            await store.open()
        await store.close()

    asyncio.run(main())


def test_an_unreachable_redis_is_a_clear_error() -> None:
    async def main() -> None:
        store = RedisStore("redis://127.0.0.1:1/0")
        with pytest.raises(StoreError, match=r"cannot reach redis://127\.0\.0\.1:1/0"):
            await store.open()
        await store.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("memory", None),
        ("sqlite:/tmp/s.db", SqliteStore),
        ("sqlite:relative/s.db?sync=full", SqliteStore),
        ("redis://localhost:6379/2", RedisStore),
        ("redis://db.internal/0?prefix=prod", RedisStore),
        ("redis://node-0:7000?cluster=1", RedisStore),
    ],
)
def test_store_specs(spec: str, kind: type | None) -> None:
    assert check(spec) == spec
    store = open_store(spec)
    assert (store is None) if kind is None else isinstance(store, kind)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "disk",
        "sqlite:",
        "sqlite:/x?sync=sometimes",
        "sqlite:/x?mode=ro",
        "http://x",
        "redis://x?cluster=yes",
        "redis://x?prefix=a{b}",
    ],
)
def test_bad_store_specs_say_what_was_expected(spec: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        check(spec)
