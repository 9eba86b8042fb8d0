"""CRI `PodSandboxStats`, `ListPodSandboxStats` and `StreamPodSandboxStats` from the pod
cgroup, its containers' and its network interfaces (`runtimed.stats`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from crib_common.cri.runtime.v1 import (
    ListPodSandboxStatsRequest,
    ListPodSandboxStatsResponse,
    PodSandboxStats,
    PodSandboxStatsFilter,
    PodSandboxStatsRequest,
    PodSandboxStatsResponse,
    StreamPodSandboxStatsRequest,
    StreamPodSandboxStatsResponse,
)
from crib_common.server import CriTable

from ..daemon import Runtimed
from ..messages.listing import select, stats_pages
from ..messages.stats import sandbox_stats
from ..node import Node
from ..oci.spec import is_set
from ..stats import pod_usage
from ..store.records import SandboxRecord


def _select(node: Node, f: PodSandboxStatsFilter | None) -> list[SandboxRecord]:
    picked = [r for r in node.sandboxes.values() if r.status.state == "ready"]
    if f is not None:
        picked = select(picked, f.id, f.label_selector)
    return picked


def register(table: CriTable, runtimed: Runtimed) -> None:
    node = runtimed.node

    async def stats(rec: SandboxRecord) -> PodSandboxStats:
        return sandbox_stats(await pod_usage(node, rec))

    @table.unary("/runtime.v1.RuntimeService/PodSandboxStats", PodSandboxStatsRequest)
    async def pod_sandbox_stats(request: PodSandboxStatsRequest) -> PodSandboxStatsResponse:
        return PodSandboxStatsResponse(
            stats=await stats(node.find_sandbox(request.pod_sandbox_id)))

    @table.unary("/runtime.v1.RuntimeService/ListPodSandboxStats", ListPodSandboxStatsRequest)
    async def list_pod_sandbox_stats(
        request: ListPodSandboxStatsRequest,
    ) -> ListPodSandboxStatsResponse:
        picked = _select(node, request.filter if is_set(request.filter) else None)
        # Each pod asks imaged for its containers' usage: ask for every pod at once, as
        # ListContainerStats does.
        return ListPodSandboxStatsResponse(
            stats=list(await asyncio.gather(*(stats(rec) for rec in picked))))

    @table.stream("/runtime.v1.RuntimeService/StreamPodSandboxStats",
                  StreamPodSandboxStatsRequest)
    def stream_pod_sandbox_stats(
        request: StreamPodSandboxStatsRequest,
    ) -> AsyncIterator[StreamPodSandboxStatsResponse]:
        return stats_pages(_select(node, request.filter if is_set(request.filter) else None),
                           lambda r: r.meta.id in node.sandboxes, stats,
                           lambda page: StreamPodSandboxStatsResponse(pod_sandbox_stats=page))
