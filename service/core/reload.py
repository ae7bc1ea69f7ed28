"""Model control without a restart: read the repository again and change what is served.

A reload (the `ReloadModels` RPC, `seqserve models reload`, or the watch every
`--reload-interval` seconds) compares the repository with what is served:

- A new version folder is loaded and checked as at startup (spec, graph, a
  smoke run) off the event loop. It is served, and becomes its model's latest
  if it sorts last, only if every check passes; a broken one is refused with a
  log line and changes nothing. It is tried again once its files change.
- A version whose folder is gone takes no new sessions and is no longer
  listed. Its open sessions keep working on it until they close or expire,
  never moved to another version; once it has none, its batcher stops.
- A served version whose files changed in place is left as it is, with a log
  line: versions are immutable, a new model goes in a new version folder.
- Every other version, and the state of its sessions, is untouched.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from seqserve.core.repository import ModelLoadError, VersionFolder, scan_each
from seqserve.core.runtime import load_version
from seqserve.core.spec import ONNX_FILE, SPEC_FILE

if TYPE_CHECKING:
    from seqserve.core.sessions import SessionManager

log = logging.getLogger(__name__)

Label = tuple[str, str]  # (model name, version)
Stamp = tuple[tuple[int, int], ...]  # (mtime_ns, size) of model.onnx and model.json


def stamp(path: Path) -> Stamp | None:
    """What changes when a version's files are replaced; None while one is missing."""
    try:
        stats = [os.stat(path / name) for name in (ONNX_FILE, SPEC_FILE)]
    except OSError:
        return None
    return tuple((st.st_mtime_ns, st.st_size) for st in stats)


@dataclass
class ReloadReport:
    """What one reload changed: labels added and removed, and those refused with why."""

    added: list[Label] = field(default_factory=list)
    removed: list[Label] = field(default_factory=list)
    refused: list[tuple[Label, str]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


class Reloader:
    """Reloads one manager's repository; one reload at a time."""

    def __init__(self, sessions: SessionManager) -> None:
        self._sessions = sessions
        registry = sessions.catalog.registry
        if registry.repository is None:
            raise ValueError("a reload needs the folder the models were loaded from")
        self.repository: Path = registry.repository
        self._threads = registry.ort_threads
        self._lock = asyncio.Lock()
        # The files each served version was loaded from, and those of refused folders
        # (tried again only once they change, so a watch does not log the same refusal
        # every interval).
        self._stamps: dict[Label, Stamp | None] = {
            (m.name, m.version): stamp(m.path) for m in registry.models()
        }
        self._refused: dict[Label, tuple[Stamp | None, str]] = {}
        self._changed_in_place: set[Label] = set()

    async def reload(self) -> ReloadReport:
        async with self._lock:
            report = await self._reload()
        self.unload_unused()
        if report.changed or report.refused:
            log.info(
                "models reloaded from %s: added %s, removed %s, refused %s",
                self.repository,
                _labels(report.added),
                _labels(report.removed),
                _labels([label for label, _ in report.refused]),
            )
        return report

    async def _reload(self) -> ReloadReport:
        report = ReloadReport()
        folders, problems = await asyncio.to_thread(scan_each, self.repository)
        for where, problem in problems:
            report.refused.append(((where, ""), problem))
        present = {(f.name, f.version): f for f in folders}
        sessions = self._sessions
        served = {(m.name, m.version) for m in sessions.catalog.registry.models()}
        for label in sorted(served - present.keys()):
            self._retire(label)
            report.removed.append(label)
        for label, folder in sorted(present.items()):
            if label in served:
                self._check_unchanged(label, folder)
                continue
            refused = await self._add(label, folder)
            if refused is None:
                report.added.append(label)
            else:
                report.refused.append((label, refused))
        return report

    def _retire(self, label: Label) -> None:
        sessions = self._sessions
        sessions.catalog.registry.remove(*label)
        version = sessions.loaded(*label)
        if version is not None:
            version.retired = True
        self._stamps.pop(label, None)
        self._changed_in_place.discard(label)
        log.info("model %s/%s removed: it takes no new sessions", *label)

    def _check_unchanged(self, label: Label, folder: VersionFolder) -> None:
        now = stamp(folder.path)
        if now == self._stamps.get(label) or label in self._changed_in_place:
            return
        self._changed_in_place.add(label)  # said once, until the version is removed
        log.warning(
            "model %s/%s changed in place; the loaded version stays as it was (versions are "
            "immutable: put a new model in a new version folder)",
            *label,
        )

    async def _add(self, label: Label, folder: VersionFolder) -> str | None:
        """Serve a version folder; why not, if it is refused."""
        now = stamp(folder.path)
        earlier = self._refused.get(label)
        if earlier is not None and earlier[0] == now:
            return earlier[1]  # the same files as last time: the same answer, unlogged
        old = self._sessions.loaded(*label)
        if old is not None and old.retired and not old.batcher.stopped:
            # Removed and put back while its sessions are still open: serve that one again,
            # if it is the same files; two models under one label cannot both serve.
            if now == stamp(old.model.path) and now is not None:
                old.retired = False
                self._sessions.catalog.registry.add(old.model)
                self._stamps[label] = now
                return None
            return self._refuse(
                label, now, "its label is still used by open sessions of the removed files"
            )
        try:
            model = await asyncio.to_thread(load_version, folder, self._threads)
        except ModelLoadError as exc:
            return self._refuse(label, now, str(exc))
        await self._sessions.add_version(model)
        self._stamps[label] = now
        self._refused.pop(label, None)
        return None

    def _refuse(self, label: Label, now: Stamp | None, problem: str) -> str:
        self._refused[label] = (now, problem)
        log.error("model %s/%s refused, nothing changed: %s", *label, problem)
        return problem

    def unload_unused(self) -> int:
        """Stop the batchers of removed versions that no session uses any more."""
        stopped = 0
        for v in self._sessions.versions:
            if v.retired and not v.batcher.stopped and v.slab.used == 0:
                self._sessions.catalog.unload(v)
                stopped += 1
        return stopped

    async def watch(self, interval_s: float, *, reload: bool = True) -> None:
        """Every `interval_s` seconds, for ever (cancel to stop): reload, or with `reload`
        False only unload removed versions whose last session has gone."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                if reload:
                    await self.reload()
                else:
                    self.unload_unused()
            except Exception:  # a failed look must not end watching, nor pass silently
                log.exception("model repository watch failed")


def _labels(labels: list[Label]) -> str:
    return ", ".join(f"{n}/{v}" if v else n for n, v in labels) or "none"
