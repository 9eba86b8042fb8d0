"""CRI `ReopenContainerLog`: ask conmon, through its control FIFO, to reopen the log."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import ReopenContainerLogRequest, ReopenContainerLogResponse
from crib_common.server import CriTable

from ..service import Runtime


def register(table: CriTable, rt: Runtime) -> None:
    @table.unary("/runtime.v1.RuntimeService/ReopenContainerLog", ReopenContainerLogRequest)
    async def reopen_container_log(
        request: ReopenContainerLogRequest,
    ) -> ReopenContainerLogResponse:
        await rt.reopen_log(request.container_id)
        return ReopenContainerLogResponse()
