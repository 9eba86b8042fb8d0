"""CRI `ExecSync`: `<runtime> exec` with pipes, a timeout, output capped at 16 MiB."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import ExecSyncRequest, ExecSyncResponse
from crib_common.errors import InvalidArgument
from crib_common.server import CriTable

from ..service import Runtime


def register(table: CriTable, rt: Runtime) -> None:
    @table.unary("/runtime.v1.RuntimeService/ExecSync", ExecSyncRequest)
    async def exec_sync(request: ExecSyncRequest) -> ExecSyncResponse:
        if request.timeout < 0:
            raise InvalidArgument("timeout must not be negative")
        out, err, code = await rt.exec_sync(request.container_id, list(request.cmd),
                                            request.timeout)
        return ExecSyncResponse(stdout=out, stderr=err, exit_code=code)
