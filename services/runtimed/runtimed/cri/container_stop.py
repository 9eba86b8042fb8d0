"""CRI `StopContainer`: the stop signal (image STOPSIGNAL or SIGTERM), `timeout` seconds,
then SIGKILL."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import StopContainerRequest, StopContainerResponse
from crib_common.errors import InvalidArgument, NotFound
from crib_common.server import CriTable

from ..daemon import Runtimed


def register(table: CriTable, runtimed: Runtimed) -> None:
    @table.unary("/runtime.v1.RuntimeService/StopContainer", StopContainerRequest)
    async def stop_container(request: StopContainerRequest) -> StopContainerResponse:
        if request.timeout < 0:
            raise InvalidArgument("timeout must not be negative")
        try:
            rec = runtimed.node.find_container(request.container_id)
        except NotFound:
            # api.proto: StopContainer "must not return an error if the container has
            # already been stopped"; a removed one is stopped too (CRI-O
            # container_stop.go).
            return StopContainerResponse()
        await runtimed.containers.stop(rec, request.timeout)
        return StopContainerResponse()
