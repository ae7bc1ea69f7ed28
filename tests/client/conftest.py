"""Fixtures for the client tests: the live server and the exported models of tests/grpc."""

from __future__ import annotations

from tests.grpc.conftest import server, zoo

__all__ = ["server", "zoo"]  # fixtures, found by pytest through this module's names
