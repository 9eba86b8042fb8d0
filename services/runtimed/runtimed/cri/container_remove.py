"""CRI `RemoveContainer`: force-stop, runtime delete, unmount, remove the snapshot."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import RemoveContainerRequest, RemoveContainerResponse
from crib_common.errors import NotFound
from crib_common.server import CriTable

from ..daemon import Runtimed


def register(table: CriTable, runtimed: Runtimed) -> None:
    @table.unary("/runtime.v1.RuntimeService/RemoveContainer", RemoveContainerRequest)
    async def remove_container(request: RemoveContainerRequest) -> RemoveContainerResponse:
        try:
            rec = runtimed.node.find_container(request.container_id)
        except NotFound:
            # api.proto: "This call is idempotent, and must not return an error if the
            # container has already been removed."
            return RemoveContainerResponse()
        await runtimed.containers.remove(rec)
        return RemoveContainerResponse()
