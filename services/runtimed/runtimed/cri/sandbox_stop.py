"""CRI `StopPodSandbox`: stop every container, stop the infra, release the network."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import StopPodSandboxRequest, StopPodSandboxResponse
from crib_common.errors import NotFound
from crib_common.server import CriTable

from ..daemon import Runtimed


def register(table: CriTable, runtimed: Runtimed) -> None:
    @table.unary("/runtime.v1.RuntimeService/StopPodSandbox", StopPodSandboxRequest)
    async def stop_pod_sandbox(request: StopPodSandboxRequest) -> StopPodSandboxResponse:
        try:
            rec = runtimed.node.find_sandbox(request.pod_sandbox_id)
        except NotFound:
            # api.proto: "If there are any running containers in the sandbox, they must
            # be forcibly terminated. ... this call is idempotent, and must not return an
            # error if all relevant resources have already been reclaimed."
            return StopPodSandboxResponse()
        await runtimed.sandboxes.stop(rec)
        return StopPodSandboxResponse()
