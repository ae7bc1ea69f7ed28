"""The connection flags that `seqserve models` and `seqserve predict` share."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from seqserve.client.sync import Client
from seqserve.client.tls import TLS


def add_connection_arguments(parser: argparse.ArgumentParser, target: Any = None) -> None:
    """--target (on `target`, a mutually exclusive group, when given), --token and TLS flags."""
    (target or parser).add_argument(
        "--target", default="localhost:50051", help="server HOST:PORT [localhost:50051]"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("SEQSERVE_TOKEN"),
        help="bearer token, for a server run with --auth-tokens [env SEQSERVE_TOKEN; "
        "default: none]",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="connect with TLS, the system's CA roots verifying the server (implied by "
        "any --tls-* flag) (default: off)",
    )
    parser.add_argument(
        "--tls-ca",
        type=Path,
        help="PEM CA that signed the server's certificate (default: the system's roots)",
    )
    parser.add_argument(
        "--tls-cert", type=Path, help="PEM client certificate, for mTLS (default: none)"
    )
    parser.add_argument("--tls-key", type=Path, help="PEM key of --tls-cert (default: none)")
    parser.add_argument(
        "--tls-server-name",
        help="name the server's certificate must carry, when --target is an IP or an alias "
        "(default: the target's host)",
    )


def tls_of(args: argparse.Namespace) -> TLS | None:
    """The TLS the flags ask for, or None for plaintext."""
    given = (args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    if not args.tls and all(g is None for g in given):
        return None
    return TLS(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)


def client_of(args: argparse.Namespace, **kwargs: Any) -> Client:
    """A Client for the flags of add_connection_arguments."""
    return Client(args.target, token=args.token, tls=tls_of(args), **kwargs)
