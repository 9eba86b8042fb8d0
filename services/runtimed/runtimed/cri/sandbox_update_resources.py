"""CRI `UpdatePodSandboxResources`: new pod-level resources (sum of the containers' plus
the overhead) written to the pod cgroup. api.proto calls it best effort: the kubelet has
already resized its own pod cgroup and does not block on our answer."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import (
    UpdatePodSandboxResourcesRequest,
    UpdatePodSandboxResourcesResponse,
)
from crib_common.server import CriTable

from ..daemon import Runtimed
from ..oci.spec import is_set, resources_to_dict


def register(table: CriTable, runtimed: Runtimed) -> None:
    @table.unary("/runtime.v1.RuntimeService/UpdatePodSandboxResources",
                 UpdatePodSandboxResourcesRequest)
    async def update_pod_sandbox_resources(
        request: UpdatePodSandboxResourcesRequest,
    ) -> UpdatePodSandboxResourcesResponse:
        rec = runtimed.node.find_sandbox(request.pod_sandbox_id)
        await runtimed.sandboxes.update_resources(
            rec, resources_to_dict(request.resources if is_set(request.resources) else None),
            resources_to_dict(request.overhead if is_set(request.overhead) else None))
        return UpdatePodSandboxResourcesResponse()
