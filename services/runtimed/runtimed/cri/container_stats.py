"""CRI `ContainerStats`, `ListContainerStats` and `StreamContainerStats` from the
container's cgroup and imaged's usage of its writable layer (`runtimed.stats`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from crib_common.cri.runtime.v1 import (
    ContainerStats,
    ContainerStatsFilter,
    ContainerStatsRequest,
    ContainerStatsResponse,
    ListContainerStatsRequest,
    ListContainerStatsResponse,
    StreamContainerStatsRequest,
    StreamContainerStatsResponse,
)
from crib_common.server import CriTable

from ..daemon import Runtimed
from ..messages.listing import select, stats_pages
from ..messages.stats import container_stats
from ..node import Node
from ..oci.spec import is_set
from ..stats import container_usage
from ..store.records import ContainerRecord


def _select(node: Node, f: ContainerStatsFilter | None) -> list[ContainerRecord]:
    # Like containerd, stats cover containers that exist in the runtime.
    picked = [r for r in node.containers.values() if r.status.state in ("created", "running")]
    if f is not None:
        picked = select(picked, f.id, f.label_selector)
        if f.pod_sandbox_id:
            picked = [r for r in picked if r.meta.pod_id.startswith(f.pod_sandbox_id)]
    return picked


def register(table: CriTable, runtimed: Runtimed) -> None:
    node = runtimed.node

    async def stats(rec: ContainerRecord) -> ContainerStats:
        return container_stats(await container_usage(node, rec))

    @table.unary("/runtime.v1.RuntimeService/ContainerStats", ContainerStatsRequest)
    async def container_stats_rpc(request: ContainerStatsRequest) -> ContainerStatsResponse:
        return ContainerStatsResponse(stats=await stats(node.find_container(request.container_id)))

    @table.unary("/runtime.v1.RuntimeService/ListContainerStats", ListContainerStatsRequest)
    async def list_container_stats(
        request: ListContainerStatsRequest,
    ) -> ListContainerStatsResponse:
        picked = _select(node, request.filter if is_set(request.filter) else None)
        # One imaged usage call per container: ask them all at once.
        return ListContainerStatsResponse(
            stats=list(await asyncio.gather(*(stats(rec) for rec in picked))))

    @table.stream("/runtime.v1.RuntimeService/StreamContainerStats",
                  StreamContainerStatsRequest)
    def stream_container_stats(
        request: StreamContainerStatsRequest,
    ) -> AsyncIterator[StreamContainerStatsResponse]:
        return stats_pages(_select(node, request.filter if is_set(request.filter) else None),
                           lambda r: r.meta.id in node.containers, stats,
                           lambda page: StreamContainerStatsResponse(container_stats=page))
