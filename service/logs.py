"""How `seqserve serve` logs: text or JSON lines, and the access log's logger.

The access log (`--access-log on`) is one line per call on the logger
`seqserve.access`: a request id, the principal, the RPC, the session, the
status code, the duration, and for a stream the messages it answered. In
JSON each of those is a field of its own.
"""

from __future__ import annotations

import json
import logging
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS = logging.getLogger("seqserve.access")
# The fields an access line carries beside its message (LogRecord attributes via `extra`).
ACCESS_FIELDS = ("request_id", "principal", "rpc", "session", "code", "ms", "messages")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any access fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ACCESS_FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


def configure(level: str, fmt: str, access: bool) -> None:
    """The process's logging: `fmt` text or json; the access log on or off."""
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig: an embedding application's logging stays
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
        root.addHandler(handler)
        root.setLevel(level.upper())
    # Off: above every level, whatever the root's. On: its lines at INFO.
    ACCESS.setLevel(logging.INFO if access else logging.CRITICAL + 1)


def access_line(
    request_id: str,
    principal: str,
    rpc: str,
    session: str,
    code: str,
    seconds: float,
    messages: int | None = None,
) -> None:
    """Log one call on the access log (callers check ACCESS.isEnabledFor first)."""
    fields: dict[str, Any] = {
        "request_id": request_id,
        "principal": principal,
        "rpc": rpc,
        "session": session,
        "code": code,
        "ms": round(seconds * 1e3, 3),
    }
    extra = "" if messages is None else f" messages={messages}"
    if messages is not None:
        fields["messages"] = messages
    ACCESS.info(
        "%s %s %s session=%s %s %.3f ms%s",
        request_id,
        principal,
        rpc,
        session or "-",
        code,
        seconds * 1e3,
        extra,
        extra=fields,
    )
