"""CRI `ExecSync`: `<runtime> exec` with pipes, a timeout, output capped at 16 MiB
(`lifecycle.execsync`)."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import ExecSyncRequest, ExecSyncResponse
from crib_common.errors import FailedPrecondition, InvalidArgument
from crib_common.server import CriTable

from ..daemon import Runtimed


def register(table: CriTable, runtimed: Runtimed) -> None:
    node = runtimed.node

    @table.unary("/runtime.v1.RuntimeService/ExecSync", ExecSyncRequest)
    async def exec_sync(request: ExecSyncRequest) -> ExecSyncResponse:
        if request.timeout < 0:
            raise InvalidArgument("timeout must not be negative")
        rec = node.find_container(request.container_id)
        if not request.cmd:
            raise InvalidArgument("exec needs a command")
        if rec.status.state != "running":
            raise FailedPrecondition(f"container {rec.meta.id} is not running")
        out, err, code = await runtimed.execs.run(
            rec, node.runtime_for(rec.meta.handler), list(request.cmd), request.timeout)
        return ExecSyncResponse(stdout=out, stderr=err, exit_code=code)
