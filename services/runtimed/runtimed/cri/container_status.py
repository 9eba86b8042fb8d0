"""CRI `ContainerStatus`; with `verbose`, the free-form info map (pid, bundle, spec)."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import ContainerStatusRequest, ContainerStatusResponse
from crib_common.errors import NotFound
from crib_common.server import CriTable

from ..daemon import Runtimed
from ..messages.listing import container_status_reply
from ..messages.status import container_info, container_status


def register(table: CriTable, runtimed: Runtimed) -> None:
    @table.unary("/runtime.v1.RuntimeService/ContainerStatus", ContainerStatusRequest)
    async def container_status_rpc(
        request: ContainerStatusRequest,
    ) -> ContainerStatusResponse | bytes:
        rec = runtimed.node.find_container(request.container_id)
        if rec.status.state == "creating":
            # Not there yet for the kubelet: CreateContainer has not answered.
            raise NotFound(f"container {request.container_id!r} not found")
        if not request.verbose:
            return container_status_reply(rec)  # pre-encoded, cached per status
        return ContainerStatusResponse(status=container_status(rec),
                                       info=container_info(rec))
