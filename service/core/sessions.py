"""The session manager: the core's one entry point, a thin facade over its parts.

The front ends call this and nothing below it. It checks that the core is
running, validates requests (seqserve.core.validation), finds sessions in the
session directory (seqserve.core.directory; the store behind it is chosen by
whoever builds the manager), hands the work to the session's model version
(seqserve.core.versions: its slab and batcher) and each session change to the
store's persistence (seqserve.core.persistence: none, a journal, or shared).

Semantics worth knowing:
- Ids, principals, the idle timeout and the session cap are the directory's
  (see seqserve.core.directory).
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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy.typing as npt

from seqserve.core import snapshots, validation
from seqserve.core.batcher import Batcher
from seqserve.core.batchplan import BatchPlan, BatchResult
from seqserve.core.catalog import Catalog
from seqserve.core.directory import ID, SLOT, VERSION, DirectoryFactory, Session, SessionDirectory
from seqserve.core.durability import Durability
from seqserve.core.errors import FailedPrecondition, ResourceExhausted, Unavailable, quoted
from seqserve.core.figures import Histogram
from seqserve.core.groupcommit import SharedStore
from seqserve.core.journal import LogStore
from seqserve.core.persistence import persistence
from seqserve.core.runtime import LoadedModel, ModelEntry, ModelRegistry
from seqserve.core.settings import CoreSettings
from seqserve.core.sharing import Sharing
from seqserve.core.snapshots import SessionExport
from seqserve.core.versions import ModelVersion
from seqserve.core.work import ForecastResult, Reply, StepResult

__all__ = [
    "BatchPlan",
    "BatchResult",
    "ForecastResult",
    "SessionInfo",
    "SessionManager",
    "StepResult",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    model: str
    version: str
    position: int  # steps consumed so far
    idle_seconds: float
    ttl_seconds: float


def _ignore(exc: BaseException) -> None:
    del exc  # logged by the journal; nothing more to do without a server to stop


class SessionManager:
    """Every session of every model version, behind one set of calls."""

    def __init__(
        self,
        registry: ModelRegistry,
        settings: CoreSettings,
        directory: DirectoryFactory,
        *,
        clock: Callable[[], float] = time.monotonic,
        sweep_interval_s: float | None = None,
        store: LogStore | SharedStore | None = None,
        on_store_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._max_steps = settings.max_steps_per_request
        self.versions: list[ModelVersion] = []
        self.store = persistence(store, self.versions, settings, clock, on_store_failure or _ignore)
        # For introspection: which kind of store, if any (one of the two, or neither).
        self.durability: Durability | None = self.store.durability
        self.sharing: Sharing | None = self.store.sharing
        self.catalog = Catalog(registry, self.versions, settings, clock, self.store.journal)
        self.store.attach(self.catalog)
        self.directory: SessionDirectory = directory(self.versions, settings, clock)
        ttl = settings.session_ttl_s
        # Sweeping is vectorised per slab (cheap even at a million sessions), so a
        # short interval costs little; lazy checks cover the time in between.
        self._sweep_interval = sweep_interval_s or min(30.0, max(0.05, ttl / 4))
        self._sweeper: asyncio.Task[None] | None = None
        self._phase = "new"  # new -> running -> stopping -> stopped

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        if self._phase != "new":
            raise RuntimeError(f"SessionManager.start: expected a new manager, got {self._phase}")
        await self.store.open(self.directory)
        for v in self.versions:
            await v.batcher.start()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="session sweeper")
        self._phase = "running"

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls (Unavailable); queued steps get `grace_s` to finish, then fail."""
        if self._phase in ("stopping", "stopped"):
            return
        self._phase = "stopping"
        for v in self.versions:
            v.batcher.stop_accepting()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await asyncio.gather(*(v.batcher.stop(grace_s) for v in self.versions))
        await self.store.close()
        self._phase = "stopped"

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                self.sweep()
            except Exception:  # a sweep bug must not end sweeping, nor pass silently
                log.exception("session sweep failed")

    # --- models and figures -------------------------------------------------------------

    def models(self) -> list[ModelEntry]:
        """Every served model with its versions."""
        return self.catalog.models()

    def model(self, name: str, version: str | None = None) -> LoadedModel:
        """A served model version (the latest when version is None or empty), or NotFound."""
        return self.catalog.model(name, version)

    def version(self, name: str, version: str | None = None) -> ModelVersion:
        """What a served model version owns: its slab and batcher (introspection)."""
        return self.catalog.version(name, version)

    def loaded(self, name: str, version: str) -> ModelVersion | None:
        """The newest ModelVersion under a label, served or retired (None if never loaded)."""
        return self.catalog.loaded(name, version)

    async def add_version(self, model: LoadedModel) -> ModelVersion:
        """Serve a version loaded after start (seqserve.core.reload, seqserve.core.catalog)."""
        self._check_running()
        return await self.catalog.add(model)

    @property
    def clock(self) -> float:
        """Now on the core's clock (the one sessions' idle times are kept on)."""
        return self._clock()

    def store_figures(self) -> tuple[str, Histogram] | None:
        """The store's name and its writes' seconds, if there is a store."""
        return self.store.figures()

    @property
    def session_count(self) -> int:
        return len(self.directory)

    @property
    def evicted(self) -> int:
        """Sessions evicted for idleness since start."""
        return self.directory.evicted

    def batchers(self) -> list[Batcher[Session]]:
        return self.catalog.batchers()

    # --- lifecycle of sessions ------------------------------------------------------
    #
    # Each has two forms: a plain one (the change is made; with a store it becomes
    # durable soon after) and an async `*_session` one that returns once the store
    # holds the change, which is what a front end answers after.

    def create(
        self, model: str, version: str | None, session_id: str | None, principal: str
    ) -> SessionInfo:
        return self._create(model, version, session_id, principal)[0]

    async def create_session(
        self, model: str, version: str | None, session_id: str | None, principal: str
    ) -> SessionInfo:
        info, written = self._create(model, version, session_id, principal)
        await self._written(written)
        return info

    def _create(
        self, model: str, version: str | None, session_id: str | None, principal: str
    ) -> tuple[SessionInfo, asyncio.Future[None] | None]:
        self._check_running()
        v = self.version(model, version)
        self._check_quota(principal)
        self.store.make_room()
        s = self.directory.create(v, session_id, principal)
        v.created += 1
        return self._info(s), self.store.created(s, v.label)

    def _check_quota(self, principal: str) -> None:
        """A principal at --max-sessions-per-principal gets RESOURCE_EXHAUSTED (after a sweep,
        so that its idle sessions do not count)."""
        quota = self.settings.max_sessions_per_principal
        if not quota or self.directory.held_by(principal) < quota:
            return
        self.directory.sweep()
        held = self.directory.held_by(principal)
        if held >= quota:
            raise ResourceExhausted(
                f"too many sessions for principal {quoted(principal)}: {held} open, "
                f"max_sessions_per_principal={quota}; close idle ones"
            )

    async def ensure(
        self, session_id: str, position: int | None = None, *, latest: bool = False
    ) -> None:
        """With a shared store: load the session here if this server's copy is missing or
        may be stale (seqserve.core.sharing); `latest`: unless it is being stepped here,
        read it again whatever this copy holds. At once without a shared store."""
        if self.sharing is not None:
            self._check_running()
            await self.store.ensure(session_id, position, latest)

    def version_of(self, session_id: str, principal: str) -> ModelVersion:
        """The model version an open session is on (NotFound as for every call on it)."""
        self._check_running()
        return self.versions[self.directory.lookup(session_id, principal)[VERSION]]

    def info(self, session_id: str, principal: str) -> SessionInfo:
        return self._info(self.directory.lookup(session_id, principal))

    async def session_info(self, session_id: str, principal: str) -> SessionInfo:
        await self.ensure(session_id, latest=True)
        return self.info(session_id, principal)

    def reset(self, session_id: str, principal: str) -> SessionInfo:
        return self._reset(session_id, principal)[0]

    async def reset_session(self, session_id: str, principal: str) -> SessionInfo:
        await self.ensure(session_id)
        info, written = self._reset(session_id, principal)
        await self._written(written)
        return info

    def _reset(
        self, session_id: str, principal: str
    ) -> tuple[SessionInfo, asyncio.Future[None] | None]:
        self._check_running()
        s = self.directory.lookup(session_id, principal)
        self.versions[s[VERSION]].slab.reset(s[SLOT], self._clock())
        return self._info(s), self.store.reset(s)

    def close(self, session_id: str, principal: str) -> SessionInfo:
        """Close a session; the info returned is its last (position before closing)."""
        return self._close(session_id, principal)[0]

    async def close_session(self, session_id: str, principal: str) -> SessionInfo:
        await self.ensure(session_id)
        info, written = self._close(session_id, principal)
        await self._written(written)
        return info

    def _close(
        self, session_id: str, principal: str
    ) -> tuple[SessionInfo, asyncio.Future[None] | None]:
        s = self.directory.lookup(session_id, principal)
        info = self._info(s)
        self.directory.close(s)
        self.versions[s[VERSION]].closed += 1
        return info, self.store.closed(session_id)

    async def _written(self, written: asyncio.Future[None] | None) -> None:
        """Wait for one change's write (shared store), or for everything so far (journal)."""
        if written is not None:
            await asyncio.shield(written)
        else:
            await self.flushed()

    async def export(self, session_id: str, principal: str) -> SessionExport:
        """A session's whole state, as it is once everything applied to it is durable."""
        self._check_running()
        await self.ensure(session_id, latest=True)
        self.directory.lookup(session_id, principal)
        await self.flushed()
        s = self.directory.lookup(session_id, principal)  # still there after the wait?
        version = self.versions[s[VERSION]]
        return snapshots.export(version, snapshots.snapshot(version, s, self._clock(), time.time()))

    def import_session(
        self, state: SessionExport, principal: str, session_id: str | None = None
    ) -> SessionInfo:
        """A new session from an export (the caller owns it); its idle time starts now."""
        return self._import(state, principal, session_id)[0]

    async def import_state(
        self, state: SessionExport, principal: str, session_id: str | None = None
    ) -> SessionInfo:
        info, written = self._import(state, principal, session_id)
        await self._written(written)
        return info

    def _import(
        self, state: SessionExport, principal: str, session_id: str | None
    ) -> tuple[SessionInfo, asyncio.Future[None] | None]:
        self._check_running()
        version = self.version(state.model, state.version)
        row = snapshots.imported(version, state)  # checksum and shapes
        sid = session_id or state.session_id
        self._check_quota(principal)
        self.store.make_room()
        s = self.directory.create(version, sid, principal)
        row.session_id, row.principal, row.last_access = sid, principal, time.time()
        snapshots.install(version, s[SLOT], row, self._clock(), row.last_access)
        version.created += 1
        return self._info(s), self.store.imported(s, row)

    def sweep(self) -> int:
        """Evict every session idle for longer than the TTL; how many were evicted."""
        return self.directory.sweep()

    async def flushed(self) -> None:
        """Return once every change made so far is durable (at once without a store).

        Raises Unavailable if the store could not take them.
        """
        barrier = self.store.barrier()
        if barrier is not None:
            await asyncio.shield(barrier)

    # --- steps ----------------------------------------------------------------------

    async def step(
        self,
        session_id: str,
        values: npt.ArrayLike,
        principal: str,
        position: int | None = None,
    ) -> StepResult:
        """Apply T steps (values: T * input_size floats, time-major) to one session."""
        await self.ensure(session_id, position)
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

        A float32 array of values is kept as it is: the caller hands it over. A
        request refused up front raises here and `reply` is left alone.
        """
        self._check_running()
        s = self.directory.lookup(session_id, principal)
        version = self.versions[s[VERSION]]
        x = validation.steps(values, version.spec.input_size, self._max_steps, position)  # (T, F)
        version.step(s, x, position, reply)

    async def forecast(self, session_id: str, horizon: int, principal: str) -> ForecastResult:
        """Roll the model forward `horizon` steps from the session's state; it stays unchanged."""
        self._check_running()
        await self.ensure(session_id, latest=True)
        s = self.directory.lookup(session_id, principal)
        validation.horizon(horizon, self._max_steps)
        version = self.versions[s[VERSION]]
        if not version.spec.autoregressive:
            raise FailedPrecondition(
                f"model {version.label} is not autoregressive: its output is not a "
                "prediction of its next input, so it cannot be fed back to forecast"
            )
        future: asyncio.Future[ForecastResult] = asyncio.get_running_loop().create_future()
        version.forecast(s, horizon, future)
        return await future

    async def step_batch(
        self,
        session_ids: Sequence[str],
        times: Sequence[int] | npt.ArrayLike | None,
        values: npt.ArrayLike,
        principal: str,
        admit: Callable[[BatchPlan], None] | None = None,
        positions: Sequence[int] | npt.ArrayLike | None = None,
    ) -> BatchResult:
        """Steps for many sessions in one call (the gateway path); see `BatchPlan`.

        `admit`, when given, sees the validated plan before any step is queued
        and may refuse it by raising (a front end whose answer would not fit
        its transport's message limit, say); no step is then applied.
        `positions`, when given, are where each item's session is expected to
        be (seqserve.core.answers: a retried item is answered again).
        """
        self._check_running()
        await self.store.ensure_many(session_ids, positions)  # load what is stale here
        plan = BatchPlan(session_ids, times, values, self._max_steps, positions)
        directory = self.directory
        plan.resolve(directory.lookup_many(session_ids, principal), self.versions, directory.ttl_s)
        if admit is not None:
            admit(plan)
        loop = asyncio.get_running_loop()
        groups = plan.groups(loop)
        for version, group in groups:  # all or nothing: no group is queued if one is refused
            version.batcher.admit(len(group.slots))
        now = self._clock()
        for version, group in groups:
            version.batcher.submit(group)
            version.slab.touch(group.slots, now)
        if groups:
            await asyncio.gather(*(g.future for _, g in groups))
        return plan.result([g for _, g in groups], directory.is_open)

    # --- helpers ------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._phase != "running":
            state = "not started" if self._phase == "new" else "shutting down"
            raise Unavailable(f"the server is {state}")

    def _info(self, s: Session) -> SessionInfo:
        version, slot = self.versions[s[VERSION]], s[SLOT]
        return SessionInfo(
            session_id=s[ID],
            model=version.model.name,
            version=version.model.version,
            position=int(version.slab.position[slot]),
            idle_seconds=max(0.0, self._clock() - float(version.slab.last_access[slot])),
            ttl_seconds=self.directory.ttl_s,
        )
