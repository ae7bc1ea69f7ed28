"""The seqserve.v1.Admin servicer: model control (ReloadModels) for operators.

Callers are authenticated as for Inference (a token, or the mTLS client
certificate). With authentication on, only the principals named in
`--admin-principals` may call it (PERMISSION_DENIED for the others); without
authentication every caller may, as every caller may use the server.
"""

from __future__ import annotations

import collections
import logging
import secrets
import time
from collections.abc import Callable

import grpc

from seqserve.api import seqserve_pb2 as pb
from seqserve.api import seqserve_pb2_grpc as pb_grpc
from seqserve.core.reload import Label, Reloader
from seqserve.grpc.auth import PermissionDenied
from seqserve.grpc.status import to_status
from seqserve.logs import ACCESS, access_line

Context = grpc.aio.ServicerContext[object, object]


def _changes(labels: list[Label]) -> list[pb.ModelVersionChange]:
    return [pb.ModelVersionChange(name=n, version=v) for n, v in labels]


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(
        self,
        reloader: Reloader,
        principal_of: Callable[[Context], str],
        admins: frozenset[str] | None,
        requests: collections.Counter[tuple[str, str]],
    ) -> None:
        self._reloader = reloader
        self._principal_of = principal_of
        self._admins = admins  # None: no authentication, every caller is an admin
        self._requests = requests  # shared with Inference: one count of requests by RPC

    async def ReloadModels(
        self, request: pb.ReloadModelsRequest, context: Context
    ) -> pb.ReloadModelsResponse:
        started = time.perf_counter()
        principal, code = "-", "OK"
        try:
            principal = self._principal_of(context)
            if self._admins is not None and principal not in self._admins:
                raise PermissionDenied(
                    f"principal {principal!r} may not call seqserve.v1.Admin; expected one of "
                    "the --admin-principals"
                )
            report = await self._reloader.reload()
            return pb.ReloadModelsResponse(
                added=_changes(report.added),
                removed=_changes(report.removed),
                refused=[
                    pb.ModelVersionChange(name=n, version=v, reason=why)
                    for (n, v), why in report.refused
                ],
            )
        except Exception as exc:
            status, message = to_status(exc)
            code = status.name
            await context.abort(status, message)
            raise AssertionError("unreachable: abort raises") from exc
        finally:
            self._requests[("ReloadModels", code)] += 1
            if ACCESS.isEnabledFor(logging.INFO):
                seconds = time.perf_counter() - started
                access_line(secrets.token_hex(6), principal, "ReloadModels", "", code, seconds)
