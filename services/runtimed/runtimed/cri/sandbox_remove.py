"""CRI `RemovePodSandbox`: remove its containers and everything the sandbox holds."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import RemovePodSandboxRequest, RemovePodSandboxResponse
from crib_common.server import CriTable

from ..service import Runtime


def register(table: CriTable, rt: Runtime) -> None:
    @table.unary("/runtime.v1.RuntimeService/RemovePodSandbox", RemovePodSandboxRequest)
    async def remove_pod_sandbox(request: RemovePodSandboxRequest) -> RemovePodSandboxResponse:
        # Idempotent: "must not return an error if the sandbox has already been removed".
        await rt.remove_sandbox(request.pod_sandbox_id)
        return RemovePodSandboxResponse()
