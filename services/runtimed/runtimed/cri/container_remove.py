"""CRI `RemoveContainer`: force-stop, runtime delete, unmount, remove the snapshot."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import RemoveContainerRequest, RemoveContainerResponse
from crib_common.server import CriTable

from ..service import Runtime


def register(table: CriTable, rt: Runtime) -> None:
    @table.unary("/runtime.v1.RuntimeService/RemoveContainer", RemoveContainerRequest)
    async def remove_container(request: RemoveContainerRequest) -> RemoveContainerResponse:
        # Idempotent: "must not return an error if the container has already been removed".
        await rt.remove_container(request.container_id)
        return RemoveContainerResponse()
