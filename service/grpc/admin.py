"""The seqserve.v1.Admin servicer: model control (ReloadModels) for operators.

Callers are authenticated as for Inference (a token, or the mTLS client
certificate). With authentication on, only the principals named in
`--admin-principals` may call it (PERMISSION_DENIED for the others); without
authentication every caller may, as every caller may use the server.
"""

from __future__ import annotations

from seqserve.api import seqserve_pb2 as pb
from seqserve.api import seqserve_pb2_grpc as pb_grpc
from seqserve.core.reload import Label, Reloader
from seqserve.grpc.auth import PermissionDenied
from seqserve.grpc.calls import Calls, unary


def _changes(labels: list[Label]) -> list[pb.ModelVersionChange]:
    return [pb.ModelVersionChange(name=n, version=v) for n, v in labels]


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(self, reloader: Reloader, calls: Calls, admins: frozenset[str] | None) -> None:
        self._reloader = reloader
        self.calls = calls
        self._admins = admins  # None: no authentication, every caller is an admin

    @unary
    async def ReloadModels(
        self, request: pb.ReloadModelsRequest, principal: str
    ) -> pb.ReloadModelsResponse:
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
