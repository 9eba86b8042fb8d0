"""CRI `StartContainer`: `<runtime> start` of a container conmon created."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import StartContainerRequest, StartContainerResponse
from crib_common.server import CriTable

from ..service import Runtime


def register(table: CriTable, rt: Runtime) -> None:
    @table.unary("/runtime.v1.RuntimeService/StartContainer", StartContainerRequest)
    async def start_container(request: StartContainerRequest) -> StartContainerResponse:
        await rt.start_container(request.container_id)
        return StartContainerResponse()
