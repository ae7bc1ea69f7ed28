"""TLS and mTLS for the gRPC port: `--tls-cert/--tls-key`, and `--tls-client-ca` for mTLS.

The files are checked at startup with the standard library's `ssl` (a key that
does not match its certificate, or a CA file with no certificate, is an error
before anything listens), then handed to grpc as dynamic credentials: before
each new connection's handshake grpc asks whether the certificates changed,
and a renewed pair (cert-manager rotating a Kubernetes Secret) is used from
the next connection on without a restart. A renewed pair that does not load
keeps the previous one and logs why.

With `--tls-client-ca`, a client must present a certificate signed by that CA,
and the certificate's subject common name is the caller's principal unless
bearer tokens are configured too (then the token names the principal).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

CHECK_S = 1.0  # how often the files' modification times are looked at, at most


class TlsError(ValueError):
    """Certificate files that cannot be used; the message names the file."""


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of `--tls-cert`, `--tls-key` and optionally `--tls-client-ca`."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def _paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) + ((self.client_ca,) if self.client_ca else ())

    def stamp(self) -> tuple[tuple[int, int], ...]:
        """What changes when any of the files is replaced (OSError if one is gone)."""
        return tuple((s.st_mtime_ns, s.st_size) for s in map(os.stat, self._paths()))

    def load(self) -> grpc.ServerCertificateConfiguration:
        """Check the files as a TLS server would use them, and read them for grpc."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(
                f"cannot use --tls-cert {self.cert} with --tls-key {self.key}: {_reason(exc)}"
            ) from None
        if self.client_ca is not None:
            try:
                context.load_verify_locations(self.client_ca)
            except (OSError, ssl.SSLError) as exc:
                raise TlsError(
                    f"cannot use --tls-client-ca {self.client_ca}: {_reason(exc)}"
                ) from None
        try:
            pair = (self.key.read_bytes(), self.cert.read_bytes())
            ca = self.client_ca.read_bytes() if self.client_ca else None
        except OSError as exc:
            raise TlsError(f"cannot read {exc.filename}: {exc.strerror}") from None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)


REASONS = {  # OpenSSL's reasons for the mistakes an operator makes most
    "KEY_VALUES_MISMATCH": "the key does not match the certificate",
    "NO_CERTIFICATE_OR_CRL_FOUND": "no PEM certificate in the file",
    "PEM_LIB": "not a PEM file of the expected kind",
}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        return f"{REASONS[reason]} ({reason})" if reason in REASONS else reason
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


class _Fetcher:
    """grpc's certificate fetcher: a new configuration when the files changed, else None."""

    def __init__(self, files: TlsFiles) -> None:
        self._files = files
        self._stamp = files.stamp()
        self._checked = time.monotonic()
        self._lock = threading.Lock()  # grpc calls it from its own threads

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            now = time.monotonic()
            if now - self._checked < CHECK_S:
                return None
            self._checked = now
            try:
                stamp = self._files.stamp()
            except OSError:
                return None  # mid-rename (a Secret's symlink swap): keep what we have
            if stamp == self._stamp:
                return None
            self._stamp = stamp
            try:
                config = self._files.load()
            except TlsError as exc:
                log.error("certificates not reloaded, the previous ones stay: %s", exc)
                return None
            log.info("certificates reloaded from %s", self._files.cert)
            return config


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Credentials for `add_secure_port`: TLS, or mTLS when a client CA is given."""
    initial = files.load()  # TlsError at startup, before the port is bound
    fetch: Any = _Fetcher(files)  # grpc's stubs omit that None means "no change"
    return grpc.dynamic_ssl_server_credentials(
        initial, fetch, require_client_authentication=files.mutual
    )


def certificate_principal(context: Any) -> str | None:
    """The subject common name of the client certificate of a call, if it presented one."""
    names = context.auth_context().get("x509_common_name")
    if not names:
        return None
    name = names[0]
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
