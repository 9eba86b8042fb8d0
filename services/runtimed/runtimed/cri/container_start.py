"""CRI `StartContainer`: `<runtime> start` of a container the monitor created."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import StartContainerRequest, StartContainerResponse
from crib_common.server import CriTable

from ..daemon import Runtimed


def register(table: CriTable, runtimed: Runtimed) -> None:
    node = runtimed.node

    @table.unary("/runtime.v1.RuntimeService/StartContainer", StartContainerRequest)
    async def start_container(request: StartContainerRequest) -> StartContainerResponse:
        rec = node.find_container(request.container_id)
        await runtimed.containers.start(rec, node.runtime_for(rec.meta.handler))
        return StartContainerResponse()
