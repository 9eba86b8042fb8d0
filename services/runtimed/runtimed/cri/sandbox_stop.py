"""CRI `StopPodSandbox`: stop every container, stop the infra, release the network."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import StopPodSandboxRequest, StopPodSandboxResponse
from crib_common.server import CriTable

from ..service import Runtime


def register(table: CriTable, rt: Runtime) -> None:
    @table.unary("/runtime.v1.RuntimeService/StopPodSandbox", StopPodSandboxRequest)
    async def stop_pod_sandbox(request: StopPodSandboxRequest) -> StopPodSandboxResponse:
        # Idempotent: an unknown sandbox is success (api.proto, StopPodSandbox).
        await rt.stop_sandbox(request.pod_sandbox_id)
        return StopPodSandboxResponse()
