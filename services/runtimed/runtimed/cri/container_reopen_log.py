"""CRI `ReopenContainerLog`: ask the monitor, through its control FIFO, to reopen the
log (after the kubelet rotated it)."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import ReopenContainerLogRequest, ReopenContainerLogResponse
from crib_common.errors import FailedPrecondition
from crib_common.server import CriTable

from ..daemon import Runtimed


def register(table: CriTable, runtimed: Runtimed) -> None:
    @table.unary("/runtime.v1.RuntimeService/ReopenContainerLog", ReopenContainerLogRequest)
    async def reopen_container_log(
        request: ReopenContainerLogRequest,
    ) -> ReopenContainerLogResponse:
        rec = runtimed.node.find_container(request.container_id)
        if rec.status.state != "running":
            raise FailedPrecondition(f"container {rec.meta.id} is not running")
        await runtimed.containers.reopen_log(rec)
        return ReopenContainerLogResponse()
