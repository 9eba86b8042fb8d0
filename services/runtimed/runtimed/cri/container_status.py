"""CRI `ContainerStatus`."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import ContainerStatusRequest, ContainerStatusResponse
from crib_common.errors import NotFound
from crib_common.server import CriTable

from ..service import Runtime
from ..views import container_info, container_status


def register(table: CriTable, rt: Runtime) -> None:
    @table.unary("/runtime.v1.RuntimeService/ContainerStatus", ContainerStatusRequest)
    async def container_status_rpc(request: ContainerStatusRequest) -> ContainerStatusResponse:
        rec = rt.find_container(request.container_id)
        if rec.status.state == "creating":
            raise NotFound(f"container {request.container_id!r} not found")
        return ContainerStatusResponse(status=container_status(rec),
                                       info=container_info(rec) if request.verbose else {})
