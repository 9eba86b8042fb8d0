"""CRI `StopContainer`: the stop signal (image STOPSIGNAL or SIGTERM), `timeout` seconds,
then SIGKILL."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import StopContainerRequest, StopContainerResponse
from crib_common.errors import InvalidArgument
from crib_common.server import CriTable

from ..service import Runtime


def register(table: CriTable, rt: Runtime) -> None:
    @table.unary("/runtime.v1.RuntimeService/StopContainer", StopContainerRequest)
    async def stop_container(request: StopContainerRequest) -> StopContainerResponse:
        if request.timeout < 0:
            raise InvalidArgument("timeout must not be negative")
        # Idempotent: "must not return an error if the container has already been
        # stopped" (api.proto, StopContainer).
        await rt.stop_container(request.container_id, request.timeout)
        return StopContainerResponse()
