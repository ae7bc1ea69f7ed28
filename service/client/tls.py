"""TLS for the clients' channels: `Client(target, tls=TLS(ca="ca.pem"))`, or `tls=True`.

TLS()                                  the system's CA roots verify the server
TLS(ca="ca.pem")                       a private CA verifies the server
TLS(ca="ca.pem", cert="me.pem", key="me.key")
                                       mTLS: the client shows its certificate too
TLS(ca="ca.pem", server_name="seqserve")
                                       verify that name, not the target's host
                                       (dialing an IP or a tunnel)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from seqserve.client._common import SeqServeClientError

PathLike = str | Path


@dataclass(frozen=True)
class TLS:
    """How a client verifies the server, and the certificate it shows for mTLS."""

    ca: PathLike | None = None  # PEM roots; None: the system's
    cert: PathLike | None = None  # PEM client certificate (chain), for mTLS
    key: PathLike | None = None  # its PEM private key
    server_name: str | None = None  # the name the server's certificate must carry

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise SeqServeClientError("TLS: expected both cert and key for mTLS, got one of them")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "CA"),
            private_key=_read(self.key, "key"),
            certificate_chain=_read(self.cert, "certificate"),
        )

    def options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def _read(path: PathLike | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise SeqServeClientError(
            f"TLS: cannot read the {what} file {path}: {exc.strerror}"
        ) from None


def as_tls(tls: TLS | bool | None) -> TLS | None:
    """`tls=True` is TLS with the system's roots; False or None is plaintext."""
    if tls is True:
        return TLS()
    return tls or None
