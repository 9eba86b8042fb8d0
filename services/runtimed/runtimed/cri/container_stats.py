"""CRI `ContainerStats`, `ListContainerStats` and `StreamContainerStats` from cgroup v1 and
imaged's usage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from crib_common.cri.runtime.v1 import (
    ContainerStatsFilter,
    ContainerStatsRequest,
    ContainerStatsResponse,
    ListContainerStatsRequest,
    ListContainerStatsResponse,
    StreamContainerStatsRequest,
    StreamContainerStatsResponse,
)
from crib_common.server import CriTable

from ..oci.spec import is_set
from ..service import Runtime
from ..store.records import ContainerRecord
from ..views import container_stats, select, stats_pages


def _select(rt: Runtime, f: ContainerStatsFilter | None) -> list[ContainerRecord]:
    # Like containerd, stats cover containers that exist in the runtime.
    picked = [r for r in rt.containers.values() if r.status.state in ("created", "running")]
    if f is not None:
        picked = select(picked, f.id, f.label_selector)
        if f.pod_sandbox_id:
            picked = [r for r in picked if r.meta.pod_id.startswith(f.pod_sandbox_id)]
    return picked


def register(table: CriTable, rt: Runtime) -> None:
    @table.unary("/runtime.v1.RuntimeService/ContainerStats", ContainerStatsRequest)
    async def container_stats_rpc(request: ContainerStatsRequest) -> ContainerStatsResponse:
        rec = rt.find_container(request.container_id)
        return ContainerStatsResponse(stats=await container_stats(rt, rec))

    @table.unary("/runtime.v1.RuntimeService/ListContainerStats", ListContainerStatsRequest)
    async def list_container_stats(
        request: ListContainerStatsRequest,
    ) -> ListContainerStatsResponse:
        picked = _select(rt, request.filter if is_set(request.filter) else None)
        # One imaged usage call per container: ask them all at once.
        out = await asyncio.gather(*(container_stats(rt, rec) for rec in picked))
        return ListContainerStatsResponse(stats=list(out))

    @table.stream("/runtime.v1.RuntimeService/StreamContainerStats",
                  StreamContainerStatsRequest)
    def stream_container_stats(
        request: StreamContainerStatsRequest,
    ) -> AsyncIterator[StreamContainerStatsResponse]:
        return stats_pages(_select(rt, request.filter if is_set(request.filter) else None),
                           lambda r: r.meta.id in rt.containers, lambda r: container_stats(rt, r),
                           lambda page: StreamContainerStatsResponse(container_stats=page))

