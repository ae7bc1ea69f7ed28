"""`redis://HOST:PORT/DB`: sessions in a Redis server, shared by every replica that uses it.

Redis is the system of record; each replica's slabs are a write-through
cache of the sessions it serves (seqserve.core.sharing). One hash per
session, under the prefix `seqserve` (`?prefix=NAME` changes it):

    PREFIX:{SESSION_ID}   pos   the session's position (steps applied)
                          row   its whole state (seqserve.core.records' session row)

The braces make the session id the key's hash tag, so with Redis Cluster
(`?cluster=1`) every operation on a session is a single-slot one. A key
expires after the session TTL without a write: Redis itself evicts idle
sessions, whichever replica served them last.

Every write is a compare-and-set in one Lua script: a step's row is written
only if the session is still at the position the step started from, a
create only if the id is free, a reset only if the session exists. So two
replicas can never both advance a session from the same position: the
second write fails and that replica drops its stale copy.

What it survives depends on the Redis server's persistence. Redis writes a
command to its append-only file before it replies, so with `appendonly yes`
a crash of any seqserve replica or of the Redis process loses no
acknowledged step; with `appendfsync everysec` (Redis' default) a crash of
the Redis host may lose about the last second of them, with `appendfsync
always` none. Without the append-only file a Redis restart loses everything
since its last snapshot: the server says so in its log at start. Commands
that fail on a lost connection are retried with backoff for about RETRY_S
seconds, then the steps waiting on them fail with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import defaultdict
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from seqserve.core.cas import CONFLICT, CREATE, DELETE, EXISTING, Op
from seqserve.core.journal import StoreError
from seqserve.hints import install

log = logging.getLogger(__name__)

FORMAT = "seqserve.shared/v1"
RETRY_S = 5.0


def parse(spec: str) -> tuple[str, str, bool]:
    """`redis://...[?prefix=NAME][&cluster=1]` -> (the URL for the client, prefix, cluster)."""
    parts = urlsplit(spec)
    options = parse_qs(parts.query, keep_blank_values=True)
    prefix = options.pop("prefix", ["seqserve"])[-1]
    cluster = options.pop("cluster", ["0"])[-1]
    if parts.scheme not in ("redis", "rediss", "unix") or not prefix or cluster not in ("0", "1"):
        raise ValueError(f"expected redis://HOST:PORT/DB[?prefix=NAME][&cluster=1], got {spec!r}")
    if any(c in prefix for c in "{}"):
        raise ValueError(f"expected a key prefix without braces, got {prefix!r}")
    query = "&".join(f"{k}={v}" for k, values in options.items() for v in values)
    return urlunsplit(parts._replace(query=query)), prefix, cluster == "1"


class RedisStore:
    """The shared store of seqserve.core.sharing on one Redis server or cluster."""

    shared = True  # the session manager writes through to it (not a journal)

    def __init__(self, spec: str) -> None:
        self.url, self.prefix, self.cluster = parse(spec)
        parts = urlsplit(self.url)
        where = parts.hostname or parts.path
        self._name = f"redis://{where}:{parts.port or 6379}{parts.path if parts.hostname else ''}"
        self._client: Any = None
        self._write: Any = None  # the registered Lua script

    @property
    def name(self) -> str:
        return self._name

    def key(self, session_id: str) -> str:
        return f"{self.prefix}:{{{session_id}}}"

    async def open(self) -> None:
        try:
            import redis.asyncio as aredis
            from redis.asyncio.cluster import RedisCluster
            from redis.backoff import ExponentialBackoff
            from redis.exceptions import ConnectionError, TimeoutError
            from redis.retry import Retry
        except ImportError as exc:
            raise StoreError(f"{self._name} needs the redis client: {install('redis')}") from exc
        # About RETRY_S seconds of reconnecting before a command fails for good.
        retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=int(RETRY_S / 0.5))
        options: dict[str, Any] = {"retry": retry, "socket_connect_timeout": 2.0}
        if self.cluster:
            self._client = RedisCluster.from_url(self.url, **options)
        else:
            self._client = aredis.from_url(
                self.url, retry_on_error=[ConnectionError, TimeoutError], **options
            )
            pool = self._client.connection_pool
            # hiredis comes with redis[hiredis], the store's extra; without it redis-py packs.
            with contextlib.suppress(ImportError):
                pool.connection_class = _packing_in_c(pool.connection_class)
        try:
            await self._client.ping()
            found = await self._client.set(f"{self.prefix}:format", FORMAT, nx=True, get=True)
        except Exception as exc:
            raise StoreError(f"cannot reach {self._name}: {exc}") from exc
        if found is not None and found.decode() != FORMAT:
            raise StoreError(
                f"{self._name}: expected a store of format {FORMAT!r} under prefix "
                f"{self.prefix!r}, got {found.decode()!r}"
            )
        self._write = self._client.register_script(_WRITE)
        await self._warn_without_aof()

    async def load(self, session_id: str) -> bytes | None:
        row: bytes | None = await self._client.hget(self.key(session_id), "row")
        return row

    async def write(self, ops: list[Op], ttl_ms: int) -> list[int]:
        """Apply each op if its condition holds; APPLIED, CONFLICT or MISSING for each."""
        if not self.cluster:
            return await self._script(ops, ttl_ms)
        # A script may touch one slot only: one call per slot, all in flight at once.
        from redis.crc import key_slot

        by_slot: dict[int, list[int]] = defaultdict(list)
        for i, op in enumerate(ops):
            by_slot[key_slot(self.key(op[0]).encode())].append(i)
        groups = list(by_slot.values())
        done = await asyncio.gather(*(self._script([ops[i] for i in g], ttl_ms) for g in groups))
        out = [CONFLICT] * len(ops)
        for indices, outcomes in zip(groups, done, strict=True):
            for i, outcome in zip(indices, outcomes, strict=True):
                out[i] = outcome
        return out

    async def _script(self, ops: list[Op], ttl_ms: int) -> list[int]:
        sids, expects, positions, rows = zip(*ops, strict=True)  # one column each
        keys = list(map(self.key, sids))
        # The conditions and new positions as one text of words (see _WRITE); the rows
        # as arguments of their own, which Redis hands to the script as they are.
        words = zip(map(_WORDS.get, expects, map(str, expects)), map(str, positions), strict=True)
        heads = " ".join(itertools.chain.from_iterable(words))
        result = await self._write(keys=keys, args=[ttl_ms, heads, *rows])
        return [int(r) for r in result]

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _warn_without_aof(self) -> None:
        try:
            config = await self._client.config_get("appendonly")
        except Exception:  # managed Redis may not allow CONFIG: say nothing rather than guess
            return
        if isinstance(config, dict) and config.get("appendonly") not in (None, "yes"):
            log.warning(
                "%s runs without its append-only file (appendonly %s): a Redis restart "
                "loses the sessions' steps since its last snapshot",
                self._name,
                config.get("appendonly"),
            )


_WORDS = {CREATE: "create", EXISTING: "existing", DELETE: "delete"}

# ARGV[1] the TTL; ARGV[2], per key i in turn, two words: its condition (a position,
# or create / existing / delete) and its new position; ARGV[i + 2] its row. Positions
# stay text so that Lua's doubles never round them. Redis copies each argument into
# a Lua string; a row sliced out of one large argument would be copied again (14.6 us
# of Redis CPU per key of 2.3 KB rows, against 9.7 as their own arguments). Returns
# per key 1 (applied), 0 (the condition failed) or 2 (a step's session is not there:
# closed or expired).
_WRITE = """
local ttl = ARGV[1]
local word = string.gmatch(ARGV[2], '%S+')
local out = {}
for i = 1, #KEYS do
  local k = KEYS[i]
  local want, after = word(), word()
  local ok = 0
  if want == 'delete' then
    redis.call('DEL', k)
    ok = 1
  else
    if want == 'create' then
      ok = 1 - redis.call('EXISTS', k)
    elseif want == 'existing' then
      ok = redis.call('EXISTS', k)
    else
      local pos = redis.call('HGET', k, 'pos')
      if pos == want then
        ok = 1
      elseif not pos then
        ok = 2
      end
    end
    if ok == 1 then
      redis.call('HSET', k, 'pos', after, 'row', ARGV[i + 2])
      redis.call('PEXPIRE', k, ttl)
    end
  end
  out[i] = ok
end
return out
"""


def _packing_in_c(base: type[Any]) -> type[Any]:
    """`base` (a redis-py asyncio connection class) packing commands with hiredis' C
    packer: redis-py's own packs in Python, about 7 us per key of a round's write
    (its buffer is joined again for every argument), against about 1.5."""
    import hiredis

    class Packed(base):  # type: ignore[misc]
        def pack_command(self, *args: Any) -> list[bytes]:
            head = args[0]
            if (isinstance(head, str) and " " in head) or (
                isinstance(head, bytes) and b" " in head
            ):
                args = (*head.split(), *args[1:])  # "CONFIG GET": one word per argument
            return [hiredis.pack_command(args)]

    Packed.__name__ = Packed.__qualname__ = f"Packed{base.__name__}"
    return Packed
