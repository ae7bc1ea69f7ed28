"""`redis://HOST:PORT/DB`: sessions in a Redis server, the store that replicas will share.

Keys, under the prefix `seqserve` (`?prefix=NAME` changes it):

    PREFIX:log       a stream: one entry per journal record, its id the record's number
    PREFIX:sessions  a hash: session id -> its checkpointed row
    PREFIX:meta      a hash: the store's format and the last record checkpointed
    PREFIX:owner     the server that writes this store now (a lease it renews)

What it survives depends on the Redis server's persistence. Redis writes a
command to its append-only file before it replies, so with `appendonly yes`
a crash of the seqserve server or of the Redis process loses no acknowledged
step; with `appendfsync everysec` (Redis' default) a crash of the Redis host
may lose about the last second of them, with `appendfsync always` none.
Without the append-only file a Redis restart loses everything since its last
snapshot: the server says so in its log at start.

One server writes a store at a time (replicas come with the next issue): it
holds a lease of LEASE_S seconds and renews it; a second server waits for a
lease to lapse (a killed server's does within LEASE_S), then refuses to start.
Commands that fail on a lost connection are retried with backoff for about
RETRY_S seconds before the journal gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from seqserve.core.journal import Stored, StoreError

log = logging.getLogger(__name__)

FORMAT = "seqserve.store/v1"
LEASE_S = 5.0
RETRY_S = 5.0
SCAN = 1000  # entries read per command at start


def parse(spec: str) -> tuple[str, str]:
    """`redis://...[?prefix=NAME]` -> (the URL for the client, the key prefix)."""
    parts = urlsplit(spec)
    options = parse_qs(parts.query, keep_blank_values=True)
    prefix = options.pop("prefix", ["seqserve"])[-1]
    if parts.scheme not in ("redis", "rediss", "unix") or not prefix:
        raise ValueError(f"expected redis://HOST:PORT/DB[?prefix=NAME], got {spec!r}")
    query = "&".join(f"{k}={v}" for k, values in options.items() for v in values)
    return urlunsplit(parts._replace(query=query)), prefix


class RedisStore:
    def __init__(self, spec: str) -> None:
        self.url, self.prefix = parse(spec)
        parts = urlsplit(self.url)
        where = parts.hostname or parts.path
        self._name = f"redis://{where}:{parts.port or 6379}{parts.path if parts.hostname else ''}"
        self._client: Any = None
        self._me = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._renewer: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self._name

    def _key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    async def open(self) -> Stored:
        try:
            import redis.asyncio as aredis
            from redis.backoff import ExponentialBackoff
            from redis.exceptions import ConnectionError, TimeoutError
            from redis.retry import Retry
        except ImportError as exc:
            raise StoreError(
                f"{self._name} needs the redis client: pip install 'seqserve[redis]'"
            ) from exc
        # About RETRY_S seconds of reconnecting before a command fails for good.
        retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=int(RETRY_S / 0.5))
        self._client = aredis.from_url(
            self.url,
            retry=retry,
            retry_on_error=[ConnectionError, TimeoutError],
            socket_connect_timeout=2.0,
        )
        try:
            await self._client.ping()
        except Exception as exc:
            raise StoreError(f"cannot reach {self._name}: {exc}") from exc
        await self._take_lease()
        self._renewer = asyncio.create_task(self._renew_forever(), name="redis store lease")
        await self._warn_without_aof()
        meta = {
            k.decode(): v.decode()
            for k, v in (await self._client.hgetall(self._key("meta"))).items()
        }
        fmt = meta.get("format")
        if fmt is None:
            await self._client.hset(self._key("meta"), "format", FORMAT)
        elif fmt != FORMAT:
            raise StoreError(f"{self._name}: expected a store of format {FORMAT!r}, got {fmt!r}")
        rows: list[bytes] = []
        cursor = 0
        while True:
            cursor, found = await self._client.hscan(self._key("sessions"), cursor, count=SCAN)
            rows += list(found.values())
            if cursor == 0:
                break
        records: list[tuple[int, bytes]] = []
        start = "-"
        while True:
            entries = await self._client.xrange(self._key("log"), start, "+", count=SCAN)
            for entry_id, fields in entries:
                records.append((int(entry_id.split(b"-")[0]), fields[b"r"]))
            if len(entries) < SCAN:
                break
            start = "(" + entries[-1][0].decode()
        last = records[-1][0] if records else int(meta.get("checkpoint", "0"))
        return Stored(rows=rows, records=records, next_seq=last + 1)

    def append_now(self, records: list[tuple[int, bytes]]) -> bool:
        return False  # a round trip to Redis is never quicker than awaiting it

    async def append(self, records: list[tuple[int, bytes]]) -> None:
        # MULTI/EXEC only where there is more than one record to keep together.
        pipe = self._client.pipeline(transaction=len(records) > 1)
        for seq, record in records:
            pipe.xadd(self._key("log"), {"r": record}, id=f"{seq}-1")
        results = await pipe.execute(raise_on_error=False)
        for result in results:
            # A write retried after its reply was lost meets its own records: kept once.
            if isinstance(result, Exception) and "equal or smaller" not in str(result):
                raise result

    async def save(self, rows: list[tuple[str, bytes]], deleted: list[str]) -> None:
        pipe = self._client.pipeline(transaction=True)
        if rows:
            pipe.hset(self._key("sessions"), mapping=dict(rows))
        if deleted:
            pipe.hdel(self._key("sessions"), *deleted)
        if rows or deleted:
            await pipe.execute()

    async def truncate(self, upto: int) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.xtrim(self._key("log"), minid=f"{upto + 1}-0", approximate=False)
        pipe.hset(self._key("meta"), "checkpoint", str(upto))
        await pipe.execute()

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self._client is not None:
            with contextlib.suppress(Exception):  # give the lease back if it is still ours
                await self._client.eval(_RELEASE, 1, self._key("owner"), self._me)
            await self._client.aclose()
            self._client = None

    # --- one writer at a time -------------------------------------------------------------

    async def _take_lease(self) -> None:
        key, ms = self._key("owner"), int(LEASE_S * 1000)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEASE_S + 1.0
        while not await self._client.set(key, self._me, nx=True, px=ms):
            holder = await self._client.get(key)
            if loop.time() > deadline:
                owner = holder.decode() if holder else "?"
                raise StoreError(f"{self._name} is in use by another server ({owner})")
            await asyncio.sleep(0.2)

    async def _renew_forever(self) -> None:
        key, ms = self._key("owner"), int(LEASE_S * 1000)
        while True:
            await asyncio.sleep(LEASE_S / 3)
            try:
                held = await self._client.eval(_RENEW, 1, key, self._me, ms)
            except Exception:  # the journal's own writes report a lost store
                log.warning("could not renew the lease on %s", self._name, exc_info=True)
                continue
            if not held:
                log.critical("lost the lease on %s to another server", self._name)

    async def _warn_without_aof(self) -> None:
        try:
            config = await self._client.config_get("appendonly")
        except Exception:  # managed Redis may not allow CONFIG: say nothing rather than guess
            return
        if config.get("appendonly") != "yes":
            log.warning(
                "%s runs without its append-only file (appendonly %s): a Redis restart "
                "loses the sessions' steps since its last snapshot",
                self._name,
                config.get("appendonly"),
            )


# Renew or release the lease only if this server still holds it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
