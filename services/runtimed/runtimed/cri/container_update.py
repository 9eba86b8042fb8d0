"""CRI `UpdateContainerResources`: `<runtime> update` on the live cgroup."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import (
    UpdateContainerResourcesRequest,
    UpdateContainerResourcesResponse,
)
from crib_common.errors import FailedPrecondition
from crib_common.server import CriTable

from ..daemon import Runtimed
from ..oci.spec import is_set, resources_to_dict


def register(table: CriTable, runtimed: Runtimed) -> None:
    node = runtimed.node

    @table.unary("/runtime.v1.RuntimeService/UpdateContainerResources",
                 UpdateContainerResourcesRequest)
    async def update_container_resources(
        request: UpdateContainerResourcesRequest,
    ) -> UpdateContainerResourcesResponse:
        res = resources_to_dict(request.linux if is_set(request.linux) else None)
        rec = node.find_container(request.container_id)
        if rec.status.state not in ("created", "running"):
            raise FailedPrecondition(f"container {rec.meta.id} is {rec.status.state}")
        await runtimed.containers.update(rec, node.runtime_for(rec.meta.handler), res)
        return UpdateContainerResourcesResponse()
