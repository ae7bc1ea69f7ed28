"""The durable stores keep the journal's contract: what they took comes back, once, in order.

Both run for real: a SQLite file, and a Redis server started for the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from seqserve.core.journal import LogStore, StoreError
from seqserve.store import check, open_store
from seqserve.store.redis import RedisStore
from seqserve.store.sqlite import SqliteStore
from tests.store.conftest import RedisServer

Make = Callable[[], LogStore]


@pytest.fixture(params=["sqlite", "redis"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Make:
    if request.param == "sqlite":
        return lambda: SqliteStore(f"sqlite:{tmp_path / 'store.db'}")
    server: RedisServer = request.getfixturevalue("redis_server")
    return lambda: RedisStore(server.url)


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


def test_one_server_writes_a_store_at_a_time(make: Make) -> None:
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
    ],
)
def test_store_specs(spec: str, kind: type | None) -> None:
    assert check(spec) == spec
    store = open_store(spec)
    assert (store is None) if kind is None else isinstance(store, kind)


@pytest.mark.parametrize(
    "spec", ["", "disk", "sqlite:", "sqlite:/x?sync=sometimes", "sqlite:/x?mode=ro", "http://x"]
)
def test_bad_store_specs_say_what_was_expected(spec: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        check(spec)
