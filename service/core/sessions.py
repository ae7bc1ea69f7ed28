"""Session manager: ids, ownership, idle eviction, limits, validation.

The front ends call this and nothing below it. A session is a lean record (its
id, its principal, its model version and its slot); everything numeric lives
in the model version's slab, and steps go through that version's batcher.

Semantics worth knowing:
- Ids are client-chosen (1 to 128 printable characters) or minted with 128
  random bits. Ids are one namespace: a taken id answers ALREADY_EXISTS
  whoever holds it; every other call on another principal's session answers
  NOT_FOUND, as for an unknown id.
- A session idle (no step, forecast or reset; `info` does not count) for longer
  than the TTL is evicted, lazily when it is next named and by a periodic
  sweep; it then answers NOT_FOUND.
- Requests of one session (steps, forecasts, batch items) apply in call order,
  one at a time (see seqserve.core.work.Order).
- reset and close act at once. A step of that session still queued fails
  (FAILED_PRECONDITION after a reset, NOT_FOUND after a close); a step already
  running finishes its model call but is failed the same way and its state is
  discarded. So a step answers with outputs exactly when it was applied. (A
  caller that goes away while its step runs gets no answer, but the step is
  applied; the `position` guard lets a client that retries find out.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, cast

import numpy as np
import numpy.typing as npt

from seqserve.core.batcher import Batcher
from seqserve.core.batchplan import BatchPlan, BatchResult
from seqserve.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    quoted,
)
from seqserve.core.runtime import LoadedModel, ModelRegistry
from seqserve.core.settings import CoreSettings
from seqserve.core.slab import Slab
from seqserve.core.work import ForecastResult, ForecastWork, Reply, StepResult, StepWork, distinct

__all__ = [
    "BatchResult",
    "ForecastResult",
    "SessionInfo",
    "SessionManager",
    "StepResult",
]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

MAX_ID_LENGTH = 128


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    model: str
    version: str
    position: int  # steps consumed so far
    idle_seconds: float
    ttl_seconds: float


# A session record: (session id, principal, home index, slot). A plain tuple of
# str and int on purpose: CPython's cyclic GC stops tracking such tuples, so a
# million idle sessions add nothing to its pauses (as __slots__ objects they
# made each full collection take ~0.5 s at a million sessions). Everything that
# changes (position, last access, state) lives in the slab. A record is live
# while its slab slot's owner is this very tuple.
Session = tuple[str, str, int, int]
ID: Final = 0
PRINCIPAL: Final = 1
HOME: Final = 2
SLOT: Final = 3
_principal_of = operator.itemgetter(PRINCIPAL)
_home_of = operator.itemgetter(HOME)
_slot_of = operator.itemgetter(SLOT)


class _Home:
    """What one model version owns: its model, its slab and its batcher."""

    __slots__ = ("batcher", "index", "model", "slab")

    def __init__(
        self, index: int, model: LoadedModel, settings: CoreSettings, clock: Callable[[], float]
    ) -> None:
        self.index = index
        self.model = model
        # Reserved for the session cap: pages are resident only once used (see slab).
        self.slab: Slab[Session] = Slab(model.spec, reserve=settings.max_sessions)
        self.batcher: Batcher[Session] = Batcher(model, self.slab, settings, clock)


class SessionManager:
    """Every session of every model version; the core's single entry point."""

    def __init__(
        self,
        registry: ModelRegistry,
        settings: CoreSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sweep_interval_s: float | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self._clock = clock
        self._ttl = settings.session_ttl_s
        # Sweeping is vectorised per slab (cheap even at a million sessions), so a
        # short interval costs little; lazy checks cover the time in between.
        self._sweep_interval = sweep_interval_s or min(30.0, max(0.05, self._ttl / 4))
        self._home_list = [_Home(i, m, settings, clock) for i, m in enumerate(registry.models())]
        self._homes = {(h.model.name, h.model.version): h for h in self._home_list}
        self._sessions: dict[str, Session] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._phase = "new"  # new -> running -> stopping -> stopped
        self.evicted = 0  # sessions evicted for idleness since start

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        if self._phase != "new":
            raise RuntimeError(f"SessionManager.start: expected a new manager, got {self._phase}")
        for home in self._home_list:
            await home.batcher.start()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="session sweeper")
        self._phase = "running"

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls (Unavailable); queued steps get `grace_s` to finish, then fail."""
        if self._phase in ("stopping", "stopped"):
            return
        self._phase = "stopping"
        for home in self._home_list:
            home.batcher.stop_accepting()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await asyncio.gather(*(h.batcher.stop(grace_s) for h in self._home_list))
        self._phase = "stopped"

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                self.sweep()
            except Exception:  # a sweep bug must not end sweeping, nor pass silently
                log.exception("session sweep failed")

    # --- figures ----------------------------------------------------------------------

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def state_bytes(self) -> int:
        """Bytes of slab held by open sessions (state, last output, bookkeeping columns)."""
        return sum(h.slab.used_bytes() for h in self._home_list)

    def batchers(self) -> list[Batcher[Session]]:
        return [h.batcher for h in self._home_list]

    # --- lifecycle of sessions ------------------------------------------------------

    def create(
        self, model: str, version: str | None, session_id: str | None, principal: str
    ) -> SessionInfo:
        self._check_running()
        loaded = self.registry.get(model, version)
        home = self._homes[(loaded.name, loaded.version)]
        if session_id:
            _check_id(session_id)
            existing = self._sessions.get(session_id)
            if existing is not None and not self._expire_if_idle(existing):
                raise AlreadyExists(f"session {session_id!r} already exists")
        else:
            session_id = secrets.token_hex(16)  # 128 bits
        if len(self._sessions) >= self.settings.max_sessions:
            self.sweep()
            if len(self._sessions) >= self.settings.max_sessions:
                raise ResourceExhausted(
                    f"too many sessions: {len(self._sessions)} open, "
                    f"max_sessions={self.settings.max_sessions}; close idle ones"
                )
        slot = home.slab.alloc(self._clock())
        s: Session = (session_id, sys.intern(principal), home.index, slot)
        home.slab.owners[slot] = s
        self._sessions[session_id] = s
        return self._info(s)

    def info(self, session_id: str, principal: str) -> SessionInfo:
        return self._info(self._lookup(session_id, principal))

    def reset(self, session_id: str, principal: str) -> SessionInfo:
        self._check_running()
        s = self._lookup(session_id, principal)
        slab, slot = self._home(s).slab, s[SLOT]
        slab.reset(slot)
        slab.last_access[slot] = self._clock()
        return self._info(s)

    def close(self, session_id: str, principal: str) -> SessionInfo:
        """Close a session; the info returned is its last (position before closing)."""
        s = self._lookup(session_id, principal)
        info = self._info(s)
        self._evict(s)
        return info

    def sweep(self) -> int:
        """Evict every session idle for longer than the TTL; how many were evicted."""
        cutoff = self._clock() - self._ttl
        evicted = 0
        for home in self._home_list:
            owners = home.slab.owners
            for slot in home.slab.idle_since(cutoff).tolist():
                s = owners[slot]
                if s is not None:
                    self._evict(s)
                    evicted += 1
        if evicted:
            self.evicted += evicted
            log.info("evicted %d sessions idle for more than %g s", evicted, self._ttl)
        return evicted

    # --- steps ----------------------------------------------------------------------

    async def step(
        self,
        session_id: str,
        values: npt.ArrayLike,
        principal: str,
        position: int | None = None,
    ) -> StepResult:
        """Apply T steps (values: T * input_size floats, time-major) to one session."""
        future: asyncio.Future[StepResult] = asyncio.get_running_loop().create_future()
        self.submit_step(session_id, values, principal, position, future)
        return await future

    def submit_step(
        self,
        session_id: str,
        values: npt.ArrayLike,
        principal: str,
        position: int | None,
        reply: Reply[StepResult],
    ) -> None:
        """Queue T steps for one session; the outcome goes to `reply`.

        A request refused up front raises here and `reply` is left alone.
        """
        self._check_running()
        s = self._lookup(session_id, principal)
        home, slot = self._home_list[s[HOME]], s[SLOT]
        spec = home.model.spec
        flat = self._values(values, spec.input_size)
        if position is not None and position < 0:
            raise InvalidArgument(f"expected position >= 0, got {position}")
        x = flat.reshape(-1, spec.input_size)  # (T, F)
        slab = home.slab
        epoch = int(slab.epoch[slot])
        home.batcher.submit(StepWork(s, session_id, slot, epoch, x, position, reply))
        slab.last_access[slot] = self._clock()

    async def forecast(self, session_id: str, horizon: int, principal: str) -> ForecastResult:
        """Roll the model forward `horizon` steps from the session's state; it stays unchanged."""
        self._check_running()
        s = self._lookup(session_id, principal)
        limit = self.settings.max_steps_per_request
        if not 1 <= horizon <= limit:
            raise InvalidArgument(
                f"expected a horizon from 1 to max_steps_per_request={limit}, got {horizon}"
            )
        home, slot = self._home(s), s[SLOT]
        if not home.model.spec.autoregressive:
            raise FailedPrecondition(
                f"model {home.model.label} is not autoregressive: its output is not a "
                "prediction of its next input, so it cannot be fed back to forecast"
            )
        future: asyncio.Future[ForecastResult] = asyncio.get_running_loop().create_future()
        epoch = int(home.slab.epoch[slot])
        home.batcher.submit(ForecastWork(s, session_id, slot, epoch, horizon, future))
        home.slab.last_access[slot] = self._clock()
        return await future

    async def step_batch(
        self,
        session_ids: Sequence[str],
        times: Sequence[int] | npt.ArrayLike | None,
        values: npt.ArrayLike,
        principal: str,
    ) -> BatchResult:
        """Steps for many sessions in one call (the gateway path); see `BatchPlan`."""
        self._check_running()
        plan = BatchPlan(session_ids, times, values, self.settings.max_steps_per_request)
        plan.resolve(*self._resolve(session_ids, principal), self._home_list)
        limit = self.settings.max_response_bytes
        if (size := plan.response_bytes()) > limit:
            raise ResourceExhausted(
                f"the answer to this batch of {plan.n} sessions could take {size} bytes, "
                f"over the {limit}-byte message limit; expected a smaller batch "
                "(or a larger --max-message-bytes); no step was applied"
            )
        loop = asyncio.get_running_loop()
        groups = plan.groups(loop)
        for home, group in groups:  # all or nothing: no group is queued if one is refused
            home.batcher.admit(len(group.slots))
        now = self._clock()
        for home, group in groups:
            home.batcher.submit(group)
            home.slab.last_access[group.slots] = now
        if groups:
            await asyncio.gather(*(g.future for _, g in groups))
        return plan.result([g for _, g in groups])

    # --- helpers ------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._phase != "running":
            state = "not started" if self._phase == "new" else "shutting down"
            raise Unavailable(f"the server is {state}")

    def _home(self, s: Session) -> _Home:
        return self._home_list[s[HOME]]

    def _lookup(self, session_id: str, principal: str) -> Session:
        s = self._sessions.get(session_id)
        if s is None or s[PRINCIPAL] != principal:
            raise NotFound(
                f"unknown session {quoted(session_id)} (never created, closed, or expired after "
                f"{self._ttl:g} s idle)"
            )
        if self._expire_if_idle(s):
            raise NotFound(f"session {quoted(session_id)} expired after {self._ttl:g} s idle")
        return s

    def _resolve(
        self, session_ids: Sequence[str], principal: str
    ) -> tuple[list[Session | None], I64, I64]:
        """Look up many sessions at once: records (None if unknown), home indices, slots (-1)."""
        n = len(session_ids)
        found: list[Session | None] = list(map(self._sessions.get, session_ids))
        known = cast(list[Session], found)  # checked next: no None in it
        if None not in found and set(map(_principal_of, known)) == {principal}:
            # The common batch: every session known and the caller's. C-level passes only.
            recs = found
            homes = np.fromiter(map(_home_of, known), np.int64, n)
            slots = np.fromiter(map(_slot_of, known), np.int64, n)
        else:
            recs = [r if r is not None and r[PRINCIPAL] == principal else None for r in found]
            homes = np.fromiter((-1 if r is None else r[HOME] for r in recs), np.int64, n)
            slots = np.fromiter((-1 if r is None else r[SLOT] for r in recs), np.int64, n)
        now = self._clock()
        for h in distinct(homes[homes >= 0]).tolist():
            rows = np.flatnonzero(homes == h)
            idle = now - self._home_list[h].slab.last_access[slots[rows]] > self._ttl
            for i in rows[idle].tolist():  # expired: evicted now, unknown from here on
                self._evict(recs[i])
                self.evicted += 1
                recs[i], homes[i], slots[i] = None, -1, -1
        return recs, homes, slots

    def _expire_if_idle(self, s: Session) -> bool:
        if self._clock() - float(self._home(s).slab.last_access[s[SLOT]]) > self._ttl:
            self._evict(s)
            self.evicted += 1
            return True
        return False

    def _evict(self, s: Session) -> None:
        del self._sessions[s[ID]]
        self._home(s).slab.free(s[SLOT])

    def _info(self, s: Session) -> SessionInfo:
        home, slot = self._home(s), s[SLOT]
        return SessionInfo(
            session_id=s[ID],
            model=home.model.name,
            version=home.model.version,
            position=int(home.slab.position[slot]),
            idle_seconds=max(0.0, self._clock() - float(home.slab.last_access[slot])),
            ttl_seconds=self._ttl,
        )

    def _values(self, values: npt.ArrayLike, input_size: int) -> F32:
        """A validated flat float32 copy: T * input_size finite values, 1 <= T <= limit."""
        flat = np.array(values, dtype=np.float32).reshape(-1)  # (T * F,) a copy: the core keeps it
        n = len(flat)
        if n == 0 or n % input_size:
            raise InvalidArgument(
                f"expected a positive multiple of input_size={input_size} values "
                f"(T*{input_size}, T >= 1), got {n}"
            )
        t = n // input_size
        limit = self.settings.max_steps_per_request
        if t > limit:
            raise InvalidArgument(
                f"expected at most max_steps_per_request={limit} steps, got T={t} ({n} values)"
            )
        if not np.isfinite(flat).all():
            i = int(np.flatnonzero(~np.isfinite(flat))[0])
            raise InvalidArgument(
                f"expected finite values, got {flat[i]} at index {i} "
                f"(step {i // input_size}, feature {i % input_size})"
            )
        return flat


def _check_id(session_id: str) -> None:
    if len(session_id) > MAX_ID_LENGTH:
        raise InvalidArgument(
            f"expected a session id of at most {MAX_ID_LENGTH} characters, got {len(session_id)}"
        )
    if not session_id.isprintable():
        raise InvalidArgument(f"expected a session id of printable characters, got {session_id!r}")
