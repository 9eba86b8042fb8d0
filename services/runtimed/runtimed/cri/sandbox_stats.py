"""CRI `PodSandboxStats`, `ListPodSandboxStats` and `StreamPodSandboxStats` from the pod
cgroup."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from crib_common.cri.runtime.v1 import (
    ListPodSandboxStatsRequest,
    ListPodSandboxStatsResponse,
    PodSandboxStatsFilter,
    PodSandboxStatsRequest,
    PodSandboxStatsResponse,
    StreamPodSandboxStatsRequest,
    StreamPodSandboxStatsResponse,
)
from crib_common.server import CriTable

from ..oci.spec import is_set
from ..service import Runtime
from ..store.records import SandboxRecord
from ..views import sandbox_stats, select, stats_pages


def _select(rt: Runtime, f: PodSandboxStatsFilter | None) -> list[SandboxRecord]:
    picked = [r for r in rt.sandboxes.values() if r.status.state == "ready"]
    if f is not None:
        picked = select(picked, f.id, f.label_selector)
    return picked


def register(table: CriTable, rt: Runtime) -> None:
    @table.unary("/runtime.v1.RuntimeService/PodSandboxStats", PodSandboxStatsRequest)
    async def pod_sandbox_stats(request: PodSandboxStatsRequest) -> PodSandboxStatsResponse:
        rec = rt.find_sandbox(request.pod_sandbox_id)
        return PodSandboxStatsResponse(stats=await sandbox_stats(rt, rec))

    @table.unary("/runtime.v1.RuntimeService/ListPodSandboxStats", ListPodSandboxStatsRequest)
    async def list_pod_sandbox_stats(
        request: ListPodSandboxStatsRequest,
    ) -> ListPodSandboxStatsResponse:
        picked = _select(rt, request.filter if is_set(request.filter) else None)
        # Each pod asks imaged for its containers' usage: ask for every pod at once, as
        # ListContainerStats does.
        out = await asyncio.gather(*(sandbox_stats(rt, rec) for rec in picked))
        return ListPodSandboxStatsResponse(stats=list(out))

    @table.stream("/runtime.v1.RuntimeService/StreamPodSandboxStats",
                  StreamPodSandboxStatsRequest)
    def stream_pod_sandbox_stats(
        request: StreamPodSandboxStatsRequest,
    ) -> AsyncIterator[StreamPodSandboxStatsResponse]:
        return stats_pages(_select(rt, request.filter if is_set(request.filter) else None),
                           lambda r: r.meta.id in rt.sandboxes, lambda r: sandbox_stats(rt, r),
                           lambda page: StreamPodSandboxStatsResponse(pod_sandbox_stats=page))

