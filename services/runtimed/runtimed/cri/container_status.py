"""CRI `ContainerStatus`; with `verbose`, the free-form info map (pid, bundle, spec)."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import ContainerStatusRequest, ContainerStatusResponse
from crib_common.errors import NotFound
from crib_common.server import CriTable

from ..daemon import Runtimed
from ..messages.status import container_info, container_status


def register(table: CriTable, runtimed: Runtimed) -> None:
    @table.unary("/runtime.v1.RuntimeService/ContainerStatus", ContainerStatusRequest)
    async def container_status_rpc(request: ContainerStatusRequest) -> ContainerStatusResponse:
        rec = runtimed.node.find_container(request.container_id)
        if rec.status.state == "creating":
            # Not there yet for the kubelet: CreateContainer has not answered.
            raise NotFound(f"container {request.container_id!r} not found")
        return ContainerStatusResponse(status=container_status(rec),
                                       info=container_info(rec) if request.verbose else {})
