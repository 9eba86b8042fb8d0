"""CRI `RunPodSandbox`: namespaces, network through netd, pod files, optional catatonit."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import RunPodSandboxRequest, RunPodSandboxResponse
from crib_common.errors import InvalidArgument
from crib_common.server import CriTable

from ..service import Runtime


def register(table: CriTable, rt: Runtime) -> None:
    @table.unary("/runtime.v1.RuntimeService/RunPodSandbox", RunPodSandboxRequest)
    async def run_pod_sandbox(request: RunPodSandboxRequest) -> RunPodSandboxResponse:
        if request.config is None:
            raise InvalidArgument("RunPodSandbox needs a config")
        sid = await rt.run_sandbox(request.config, request.runtime_handler)
        return RunPodSandboxResponse(pod_sandbox_id=sid)
