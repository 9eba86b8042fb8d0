"""CRI `UpdateContainerResources`: `<runtime> update` on the live cgroup."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import (
    UpdateContainerResourcesRequest,
    UpdateContainerResourcesResponse,
)
from crib_common.server import CriTable

from ..oci.spec import is_set, resources_to_dict
from ..service import Runtime


def register(table: CriTable, rt: Runtime) -> None:
    @table.unary("/runtime.v1.RuntimeService/UpdateContainerResources",
                 UpdateContainerResourcesRequest)
    async def update_container_resources(
        request: UpdateContainerResourcesRequest,
    ) -> UpdateContainerResourcesResponse:
        res = resources_to_dict(request.linux if is_set(request.linux) else None)
        await rt.update_resources(request.container_id, res)
        return UpdateContainerResourcesResponse()
