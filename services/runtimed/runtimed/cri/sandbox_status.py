"""CRI `PodSandboxStatus`."""

from __future__ import annotations

import time

from crib_common.cri.runtime.v1 import PodSandboxStatusRequest, PodSandboxStatusResponse
from crib_common.server import CriTable

from ..service import Runtime
from ..views import container_status, sandbox_info, sandbox_status


def register(table: CriTable, rt: Runtime) -> None:
    @table.unary("/runtime.v1.RuntimeService/PodSandboxStatus", PodSandboxStatusRequest)
    async def pod_sandbox_status(request: PodSandboxStatusRequest) -> PodSandboxStatusResponse:
        rec = rt.find_sandbox(request.pod_sandbox_id)
        return PodSandboxStatusResponse(
            status=sandbox_status(rt, rec),
            info=sandbox_info(rt, rec) if request.verbose else {},
            containers_statuses=[container_status(c) for c in rt.pod_containers(rec.meta.id)
                                 if c.status.state != "creating"],
            timestamp=time.time_ns(),
        )
