"""The `seqserve serve` configuration: every flag and its SEQSERVE_* variable, declared once.

`ServerSettings` is the whole configuration of a serving process: each field
declares its flag, parser, default and help once, and both the command-line
flags and the SEQSERVE_* environment variables are generated from it. The
part the serving core reads is `ServerSettings.core()`, a `CoreSettings`.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from seqserve.core.settings import CoreSettings
from seqserve.models import REPOSITORY  # a path only: the package imports no torch

# --- Server settings: every flag and its SEQSERVE_* variable, declared once -------------------


class SettingsError(ValueError):
    """A flag or environment value that cannot be used; the CLI exits 2 with its message."""


DEFAULT_REPOSITORY = REPOSITORY  # the bundled models
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
ENV_PREFIX = "SEQSERVE_"


def _number(
    convert: Callable[[str], float], noun: str, low: int, *, inclusive: bool
) -> Callable[[str], Any]:
    """A parser of finite numbers above `low` (or equal to it when `inclusive`)."""
    bound = f"{'>=' if inclusive else '>'} {low}"

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value >= low if inclusive else value > low)):
            raise SettingsError(f"expected {noun} {bound}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, "an integer", 1, inclusive=True)
_non_negative_int = _number(int, "an integer", 0, inclusive=True)
_positive_float = _number(float, "a number", 0, inclusive=False)
_non_negative_float = _number(float, "a number", 0, inclusive=True)


def _address(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not (sep and host and port.isdigit() and int(port) <= 65535):
        raise SettingsError(f"expected HOST:PORT with PORT in 0..65535, got {text!r}")
    return text


def _optional_address(text: str) -> str:
    return "" if text in ("", "off") else _address(text)


def _log_format(text: str) -> str:
    if text.lower() not in LOG_FORMATS:
        raise SettingsError(f"expected one of {', '.join(LOG_FORMATS)}, got {text!r}")
    return text.lower()


def _switch(text: str) -> bool:
    value = text.lower()
    if value not in ("on", "off", "true", "false", "1", "0", "yes", "no"):
        raise SettingsError(f"expected on or off, got {text!r}")
    return value in ("on", "true", "1", "yes")


def _names(text: str) -> str:
    names = [n.strip() for n in text.split(",")]
    if text.strip() and not all(names):
        raise SettingsError(f"expected NAME[,NAME...], got {text!r}")
    return ",".join(n for n in names if n)


def _optional_file(text: str) -> str:
    if text and not Path(text).expanduser().is_file():
        raise SettingsError(f"expected a file, got {text!r} (not a file)")
    return text


def _folder(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_dir():
        raise SettingsError(f"expected a model repository folder, got {text!r} (not a folder)")
    return path


def _log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise SettingsError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return text.lower()


def _store(text: str) -> str:
    from seqserve.store import check  # light: it imports no store's client

    try:
        return check(text)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def _setting(flag: str, parse: Callable[[str], Any], default: Any, help: str) -> Any:
    """A ServerSettings field: its default, flag, parser and help in one place."""
    return field(default=default, metadata={"flag": flag, "parse": parse, "help": help})


_CORE = CoreSettings()


@dataclass(frozen=True)
class ServerSettings:
    """`seqserve serve` configuration. Precedence: flag, then SEQSERVE_<FLAG>, then default."""

    address: str = _setting(
        "--address", _address, "0.0.0.0:50051", "HOST:PORT to listen on; port 0 picks a free port"
    )
    repository: Path = _setting(  # noqa: RUF009 (a Path default is immutable)
        "--repository",
        _folder,
        DEFAULT_REPOSITORY,
        "folder of <name>/<version>/model.onnx + model.json",
    )
    session_ttl_s: float = _setting(
        "--session-ttl",
        _positive_float,
        _CORE.session_ttl_s,
        "seconds a session may stay idle before it is evicted",
    )
    max_sessions: int = _setting(
        "--max-sessions", _positive_int, _CORE.max_sessions, "sessions the server holds at most"
    )
    max_batch: int = _setting(
        "--max-batch", _positive_int, _CORE.max_batch, "sessions' steps in one model call at most"
    )
    batch_delay_us: int = _setting(
        "--batch-delay-us",
        _non_negative_int,
        _CORE.batch_delay_us,
        "microseconds a batch waits for more steps (latency for throughput)",
    )
    max_steps_per_request: int = _setting(
        "--max-steps-per-request",
        _positive_int,
        _CORE.max_steps_per_request,
        "steps (T) one request may carry",
    )
    max_queue: int = _setting(
        "--max-queue",
        _positive_int,
        _CORE.max_queue,
        "queued steps per model version before RESOURCE_EXHAUSTED",
    )
    max_message_bytes: int = _setting(
        "--max-message-bytes",
        _positive_int,
        4 * 1024 * 1024,
        "largest gRPC message received or sent",
    )
    max_streams: int = _setting(
        "--max-streams",
        _positive_int,
        10_000,
        "StepStreams open at once; more are refused with RESOURCE_EXHAUSTED",
    )
    grace_period_s: float = _setting(
        "--grace-period",
        _non_negative_float,
        10.0,
        "seconds in-flight steps get to finish on shutdown",
    )
    ort_threads: int = _setting(
        "--ort-threads", _positive_int, _CORE.ort_threads, "ONNX Runtime intra-op threads per model"
    )
    store: str = _setting(
        "--store",
        _store,
        "memory",
        "where sessions live: memory, sqlite:PATH or redis://HOST:PORT/DB",
    )
    auth_tokens: str = _setting(
        "--auth-tokens",
        _optional_file,
        "",
        "file of TOKEN PRINCIPAL lines: calls need authorization: Bearer TOKEN; empty: open",
    )
    tls_cert: str = _setting(
        "--tls-cert",
        _optional_file,
        "",
        "PEM certificate (chain) of the gRPC port: TLS; needs --tls-key; empty: plaintext",
    )
    tls_key: str = _setting("--tls-key", _optional_file, "", "PEM private key of --tls-cert")
    tls_client_ca: str = _setting(
        "--tls-client-ca",
        _optional_file,
        "",
        "PEM CA certificates: clients must present a certificate they signed (mTLS)",
    )
    admin_principals: str = _setting(
        "--admin-principals",
        _names,
        "",
        "comma-separated principals that may call seqserve.v1.Admin when authentication is on; "
        "empty: none (without authentication: every caller)",
    )
    kserve_address: str = _setting(
        "--kserve-address",
        _optional_address,
        "",
        "HOST:PORT of a second port serving only the KServe v2 protocol (and health), e.g. "
        "0.0.0.0:8001; it is always on the main port too; empty: off",
    )
    health_address: str = _setting(
        "--health-address",
        _optional_address,
        "",
        "HOST:PORT of a plaintext port serving only grpc.health.v1 (probes under TLS); empty: off",
    )
    max_sessions_per_principal: int = _setting(
        "--max-sessions-per-principal",
        _non_negative_int,
        0,
        "sessions one principal may hold open; 0: no limit beyond --max-sessions",
    )
    reload_interval_s: float = _setting(
        "--reload-interval",
        _non_negative_float,
        0.0,
        "seconds between looks at the repository for added or removed versions; 0: only on "
        "request (seqserve models reload)",
    )
    metrics_address: str = _setting(
        "--metrics-address",
        _optional_address,
        "",
        "HOST:PORT for Prometheus metrics at /metrics; empty: off",
    )
    log_level: str = _setting("--log-level", _log_level, "info", f"one of {', '.join(LOG_LEVELS)}")
    log_format: str = _setting(
        "--log-format", _log_format, "text", "log lines as text or json (one object per line)"
    )
    access_log: bool = _setting(
        "--access-log", _switch, False, "on: one log line per call (seqserve.access)"
    )

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            given, missing = (
                ("--tls-cert", "--tls-key") if self.tls_cert else ("--tls-key", "--tls-cert")
            )
            raise SettingsError(f"{given} needs {missing} too, got only {given}")
        if self.tls_client_ca and not self.tls_cert:
            raise SettingsError("--tls-client-ca needs --tls-cert and --tls-key (mTLS is TLS)")

    @property
    def authenticated(self) -> bool:
        """Whether callers prove who they are (a token, or an mTLS client certificate)."""
        return bool(self.auth_tokens or self.tls_client_ca)

    def admins(self) -> frozenset[str] | None:
        """Who may call seqserve.v1.Admin; None: everyone (no authentication)."""
        if not self.authenticated:
            return None
        return frozenset(n for n in self.admin_principals.split(",") if n)

    def core(self) -> CoreSettings:
        """The part of the settings the serving core reads."""
        return CoreSettings(
            session_ttl_s=self.session_ttl_s,
            max_sessions=self.max_sessions,
            max_batch=self.max_batch,
            batch_delay_us=self.batch_delay_us,
            max_steps_per_request=self.max_steps_per_request,
            max_queue=self.max_queue,
            ort_threads=self.ort_threads,
            max_sessions_per_principal=self.max_sessions_per_principal,
        )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Add one flag per field; each flag's help names its variable and default."""

        for f in fields(ServerSettings):
            flag: str = f.metadata["flag"]
            parser.add_argument(
                flag,
                dest=f.name,
                type=_argparse_type(f.metadata["parse"]),
                default=None,  # None: not given, so the variable or the default applies
                metavar=flag.lstrip("-").replace("-", "_").upper(),
                help=f"{f.metadata['help']} [env {env_name(flag)}; default {f.default}]",
            )

    @classmethod
    def from_sources(
        cls, args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
    ) -> ServerSettings:
        """Settings from parsed flags, else SEQSERVE_* variables, else defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            given = getattr(args, f.name, None) if args is not None else None
            env = env_name(f.metadata["flag"])
            if given is not None:
                values[f.name] = given
            elif env in environ:
                try:
                    values[f.name] = f.metadata["parse"](environ[env])
                except SettingsError as exc:
                    raise SettingsError(f"{env}: {exc}") from None
        return cls(**values)


def env_name(flag: str) -> str:
    """--max-batch -> SEQSERVE_MAX_BATCH."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except SettingsError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert
