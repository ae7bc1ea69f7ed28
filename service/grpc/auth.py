"""Bearer tokens: `--auth-tokens FILE` maps each token to the principal that owns sessions.

The file has one `TOKEN PRINCIPAL` pair per line (blank lines and `#` comments
are skipped). A call to seqserve.v1.Inference carries `authorization: Bearer
TOKEN` metadata; a missing, malformed or unknown token is UNAUTHENTICATED, and
the call never reaches the core. Health checking and reflection stay open, so
probes and tools work without a token. The file is read again when it changes
(checked at most once a second) and on SIGHUP; a file that no longer parses
keeps the last good table and logs why.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHECK_S = 1.0  # how often the file's modification time is looked at


class Unauthenticated(Exception):
    """A call without a valid token (UNAUTHENTICATED); the message says which part failed."""


class PermissionDenied(Exception):
    """An authenticated caller that may not make this call (PERMISSION_DENIED)."""


class TokenError(ValueError):
    """A tokens file that cannot be used; the message names the line."""


def digest(token: str) -> bytes:
    """What the table keeps of a token: looking a digest up leaks nothing of the token."""
    return hashlib.sha256(token.encode()).digest()


def parse(text: str, where: str) -> dict[bytes, str]:
    """`TOKEN PRINCIPAL` lines -> {digest of the token: principal}."""
    table: dict[bytes, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise TokenError(f"{where}:{number}: expected TOKEN PRINCIPAL, got {len(parts)} fields")
        token, principal = parts
        if digest(token) in table:
            raise TokenError(f"{where}:{number}: token given twice")
        table[digest(token)] = principal
    if not table:
        raise TokenError(f"{where}: expected at least one TOKEN PRINCIPAL line, got none")
    return table


class TokenTable:
    """The tokens of one file, read again when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._table = self._read()  # a bad file at start is an error, not a warning

    def _read(self) -> dict[bytes, str]:
        try:
            stat = os.stat(self.path)
            text = self.path.read_text()
        except OSError as exc:
            raise TokenError(f"cannot read the tokens file {self.path}: {exc.strerror}") from exc
        table = parse(text, str(self.path))
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        return table

    def reload(self) -> None:
        """Read the file again now (SIGHUP); keep the old table if the new one is bad."""
        try:
            self._table = self._read()
        except TokenError as exc:
            log.error("tokens not reloaded, the previous ones stay: %s", exc)
            return
        log.info(
            "tokens reloaded from %s: %d principals", self.path, len(set(self._table.values()))
        )

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < CHECK_S:
            return
        self._checked = now
        try:
            stat = os.stat(self.path)
        except OSError:
            return  # gone for a moment (an editor's rename): keep what we have
        if (stat.st_mtime_ns, stat.st_size) != self._stamp:
            self.reload()

    def principal(self, metadata: Any) -> str:
        """The principal of a call's `authorization` metadata, or Unauthenticated."""
        self._maybe_reload()
        header = None
        for key, value in metadata or ():
            if key == "authorization":
                header = value
                break
        if header is None:
            raise Unauthenticated("expected authorization metadata (Bearer TOKEN), got none")
        scheme, _, token = str(header).partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("expected authorization: Bearer TOKEN, got another form")
        principal = self._table.get(digest(token.strip()))
        if principal is None:
            raise Unauthenticated("the token is not known to this server")
        return principal
