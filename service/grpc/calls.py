"""What every servicer shares about calls: who is calling, how many are in a handler, the
request counts and the access log, and the unary handler that does all of it.

The native Inference and Admin services and the KServe front end take one `Calls`,
so that metrics count them together and shutdown waits for all of them.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc

from seqserve.grpc.auth import TokenTable, Unauthenticated
from seqserve.grpc.status import to_status
from seqserve.grpc.tls import certificate_principal
from seqserve.logs import ACCESS, access_line

ANONYMOUS = "anonymous"

Context = grpc.aio.ServicerContext[Any, Any]


class Calls:
    """The calls of one server: authentication, counts, in-flight tracking."""

    def __init__(self, tokens: TokenTable | None = None, client_certificates: bool = False) -> None:
        self.tokens = tokens  # None: the certificate, or no authentication (ANONYMOUS)
        self._client_certificates = client_certificates  # mTLS: the certificate names the caller
        self.active = 0  # calls in a handler now
        # Requests answered, by (RPC, status code name); each stream message counts.
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self._last_start = 0.0  # loop time at which the latest call reached its handler

    def principal_of(self, context: Context) -> str:
        """Who is calling: every core call carries it.

        A bearer token names the principal when tokens are configured; else, under
        mTLS, the client certificate's subject common name; else ANONYMOUS.
        """
        if self.tokens is not None:
            return self.tokens.principal(context.invocation_metadata())
        if self._client_certificates:
            name = certificate_principal(context)
            if not name:
                raise Unauthenticated("expected a client certificate with a subject common name")
            return name
        return ANONYMOUS

    def started(self) -> None:
        self.active += 1
        self._last_start = asyncio.get_running_loop().time()

    def finished(
        self,
        rpc: str,
        code: str,
        principal: str,
        session: str,
        started: float,
        messages: int | None = None,
    ) -> None:
        """A call left its handler: count it (unary) and write its access-log line."""
        self.active -= 1
        if messages is None:
            self.requests[(rpc, code)] += 1  # a stream counts each message as it answers it
        if ACCESS.isEnabledFor(logging.INFO):
            seconds = time.perf_counter() - started
            access_line(secrets.token_hex(6), principal, rpc, session, code, seconds, messages)

    async def quiet(self, until: float, gap_s: float = 0.05) -> None:
        """Return once no call is in a handler and none has arrived for `gap_s`, or at `until`.

        Shutdown waits for this before grpc's own stop: grpc cancels the calls it
        has received but not yet handed to a handler, and a client cannot tell
        whether a CANCELLED step was applied. Until then every call reaches a
        handler and is answered (UNAVAILABLE once the core stops).
        """
        loop = asyncio.get_running_loop()
        while (now := loop.time()) < until:
            if self.active == 0 and now - self._last_start >= gap_s:
                return
            await asyncio.sleep(min(gap_s, until - now))


class HasCalls(Protocol):
    calls: Calls


_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_Self = TypeVar("_Self", bound=HasCalls)


def unary(
    body: Callable[[_Self, _Req, str], Awaitable[_Resp]],
) -> Callable[[_Self, _Req, Context], Awaitable[_Resp]]:
    """A unary handler from its body `(self, request, principal) -> response`.

    The handler finds the caller's principal and turns any failure of the body
    into its status, so each body is only the translation.
    """

    rpc = body.__name__

    @functools.wraps(body)
    async def handler(self: _Self, request: _Req, context: Context) -> _Resp:
        calls = self.calls
        calls.started()
        started = time.perf_counter()
        principal = "-"  # until the call's token says who it is
        code_name = "OK"
        try:
            principal = calls.principal_of(context)
            return await body(self, request, principal)
        except Exception as exc:
            code, message = to_status(exc)
            code_name = code.name
            await context.abort(code, message)
            raise AssertionError("unreachable: abort raises") from exc
        finally:
            session = str(getattr(request, "session_id", ""))
            calls.finished(rpc, code_name, principal, session, started)

    return handler
