"""CRI `RemovePodSandbox`: remove its containers and everything the sandbox holds."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import RemovePodSandboxRequest, RemovePodSandboxResponse
from crib_common.errors import NotFound
from crib_common.server import CriTable

from ..daemon import Runtimed


def register(table: CriTable, runtimed: Runtimed) -> None:
    @table.unary("/runtime.v1.RuntimeService/RemovePodSandbox", RemovePodSandboxRequest)
    async def remove_pod_sandbox(request: RemovePodSandboxRequest) -> RemovePodSandboxResponse:
        try:
            rec = runtimed.node.find_sandbox(request.pod_sandbox_id)
        except NotFound:
            # api.proto: "This call is idempotent, and must not return an error if the
            # sandbox has already been removed."
            return RemovePodSandboxResponse()
        await runtimed.sandboxes.remove(rec)
        return RemovePodSandboxResponse()
