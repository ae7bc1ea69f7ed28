"""Recovery: a started server's sessions, back from what a durable store holds.

The store holds session rows (its last checkpoint) and the journal records
written after it. The rows are loaded, then the records replayed in order:
a step record is applied to a session only if the session is at the
position the record started from (records the rows already include, or a
record written twice, are skipped), by running the model on the logged
inputs; the outputs and answers come from the record itself, so a retry
after the restart gets the very answer the client may have missed, while
the recomputed state equals the original within float tolerance (ONNX
Runtime at another batch size may round differently).

A session idle for longer than the TTL (wall-clock time since its last
step) is dropped. A session of a model version that is not loaded is kept
aside, with the records not yet applied to it, until that version returns
or the session expires.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from seqserve.core import records
from seqserve.core.answers import digests
from seqserve.core.directory import SLOT, VERSION, SessionDirectory
from seqserve.core.journal import Stored
from seqserve.core.records import SessionRow
from seqserve.core.snapshots import check_shapes, empty_row, install
from seqserve.core.versions import ModelVersion

log = logging.getLogger(__name__)


@dataclass
class Recovered:
    """What recovery did, and what the durability layer keeps from it."""

    restored: int = 0  # sessions serving again
    replayed_records: int = 0
    replayed_steps: int = 0  # session-steps run through the model again
    expired: list[str] = field(default_factory=list)  # to delete from the store
    dormant: dict[str, SessionRow] = field(default_factory=dict)  # versions not loaded
    seconds: float = 0.0


class _Replay:
    def __init__(
        self,
        versions: list[ModelVersion],
        directory: SessionDirectory,
        ttl_s: float,
        mono: Callable[[], float],
    ) -> None:
        self.by_label = {v.label: v for v in versions}
        self.versions = versions
        self.directory = directory
        self.ttl_s = ttl_s
        self.mono = mono
        self.out = Recovered()

    def expired(self, wall: float, now_wall: float) -> bool:
        return now_wall - wall > self.ttl_s

    def row(self, row: SessionRow) -> None:
        """A saved or imported session: serve it, keep it aside, or drop it (expired)."""
        sid = row.session_id
        self.drop(sid)
        version = self.by_label.get(row.label)
        if version is None:
            self.out.dormant[sid] = row
            return
        pending, row.pending = row.pending, []
        if row.state.size == 0 and row.position == 0:  # created, never stepped, never saved
            row = empty_row(sid, row.principal, version, row.last_access)
        problem = check_shapes(version, row)
        if problem is not None:  # the folder now holds another model under that label
            log.error("session %s cannot be restored on %s: %s", sid, row.label, problem)
            row.pending = pending
            self.out.dormant[sid] = row
            return
        s = self.directory.create(version, sid, row.principal)
        install(version, s[SLOT], row, self.mono(), time.time())
        for data in pending:  # what it missed while its model version was away
            self.record(data)

    def drop(self, sid: str) -> None:
        self.out.dormant.pop(sid, None)
        s = self.directory.get(sid)
        if s is not None:
            self.directory.close(s)

    def record(self, data: bytes) -> None:
        rec = records.decode(data)
        self.out.replayed_records += 1
        if isinstance(rec, records.Steps):
            self.steps(rec, data)
        elif isinstance(rec, records.Create):
            if (
                self.directory.get(rec.session_id) is None
                and rec.session_id not in self.out.dormant
            ):
                self.row(records.created_row(rec))
        elif isinstance(rec, records.Reset):
            s = self.directory.get(rec.session_id)
            if s is not None:
                version = self.versions[s[VERSION]]
                version.slab.reset(s[SLOT], self.mono() - (time.time() - rec.wall))
            elif rec.session_id in self.out.dormant:
                self.out.dormant[rec.session_id].pending.append(data)
        elif isinstance(rec, records.Close):
            self.drop(rec.session_id)
        else:
            self.row(rec.row)

    def steps(self, rec: records.Steps, data: bytes) -> None:
        applicable: list[int] = []
        slots: list[int] = []
        version: ModelVersion | None = None
        for i, sid in enumerate(rec.ids):
            s = self.directory.get(sid)
            if s is None:
                if sid in self.out.dormant:  # kept with the session, for when its model returns
                    item = slice(i, i + 1)
                    one = records.steps(rec.wall, [sid], rec.starts[item], rec.x[item], rec.y[item])
                    self.out.dormant[sid].pending.append(one)
                continue
            v = self.versions[s[VERSION]]
            if int(v.slab.position[s[SLOT]]) != int(rec.starts[i]):
                continue  # the row has it already, or the record came twice
            version = v
            applicable.append(i)
            slots.append(s[SLOT])
        if version is None:
            return
        rows = np.array(applicable, np.int64)
        at = np.array(slots, np.int64)
        x, y = rec.x[rows], rec.y[rows]  # (B, T, F), (B, T, O)
        _, states = version.model.run(np.ascontiguousarray(x), version.slab.gather(at))
        now = self.mono() - (time.time() - rec.wall)
        d = digests(x.reshape(len(rows), -1))
        version.slab.commit(at, version.slab.epoch[at], states, y, d, now)
        self.out.replayed_steps += len(rows)


def recover(
    stored: Stored,
    versions: list[ModelVersion],
    directory: SessionDirectory,
    ttl_s: float,
    mono: Callable[[], float],
) -> Recovered:
    """Load the rows and replay the records into the directory and slabs (before serving)."""
    started = time.perf_counter()
    replay = _Replay(versions, directory, ttl_s, mono)
    for data in stored.rows:
        replay.row(records.decode_row(data))
    for _, data in stored.records:
        replay.record(data)
    now_wall = time.time()
    for version in versions:  # idle too long, by the wall clock: gone
        slab = version.slab
        for slot in slab.idle_since(mono() - ttl_s).tolist():
            s = slab.owners[slot]
            if s is not None:
                replay.out.expired.append(s[0])
                directory.close(s)
    for sid, row in list(replay.out.dormant.items()):
        last = max([row.last_access, *(records.wall_of(p) for p in row.pending)])
        if replay.expired(last, now_wall):
            replay.out.expired.append(sid)
            del replay.out.dormant[sid]
    replay.out.restored = len(directory)
    replay.out.seconds = time.perf_counter() - started
    return replay.out
