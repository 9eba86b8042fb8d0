"""CRI `ContainerStats` and `ListContainerStats` from cgroup v1 and imaged's usage."""

from __future__ import annotations

import asyncio

from crib_common.cri.runtime.v1 import (
    ContainerStatsRequest,
    ContainerStatsResponse,
    ListContainerStatsRequest,
    ListContainerStatsResponse,
)
from crib_common.server import CriTable

from ..oci.spec import is_set
from ..service import Runtime
from ..views import container_stats, labels_match


def register(table: CriTable, rt: Runtime) -> None:
    @table.unary("/runtime.v1.RuntimeService/ContainerStats", ContainerStatsRequest)
    async def container_stats_rpc(request: ContainerStatsRequest) -> ContainerStatsResponse:
        rec = rt.find_container(request.container_id)
        return ContainerStatsResponse(stats=await container_stats(rt, rec))

    @table.unary("/runtime.v1.RuntimeService/ListContainerStats", ListContainerStatsRequest)
    async def list_container_stats(
        request: ListContainerStatsRequest,
    ) -> ListContainerStatsResponse:
        f = request.filter if is_set(request.filter) else None
        picked = []
        for rec in list(rt.containers.values()):
            # Like containerd, stats cover containers that exist in the runtime.
            if rec.status.state not in ("created", "running"):
                continue
            if f is not None:
                if f.id and not rec.meta.id.startswith(f.id):
                    continue
                if f.pod_sandbox_id and not rec.meta.pod_id.startswith(f.pod_sandbox_id):
                    continue
                if f.label_selector and not labels_match(rec.meta.labels, f.label_selector):
                    continue
            picked.append(rec)
        # One imaged usage call per container: ask them all at once.
        out = await asyncio.gather(*(container_stats(rt, rec) for rec in picked))
        return ListContainerStatsResponse(stats=list(out))
