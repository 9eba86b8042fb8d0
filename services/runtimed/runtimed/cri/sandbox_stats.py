"""CRI `PodSandboxStats` and `ListPodSandboxStats` from the pod cgroup."""

from __future__ import annotations

import asyncio

from crib_common.cri.runtime.v1 import (
    ListPodSandboxStatsRequest,
    ListPodSandboxStatsResponse,
    PodSandboxStatsRequest,
    PodSandboxStatsResponse,
)
from crib_common.server import CriTable

from ..oci.spec import is_set
from ..service import Runtime
from ..views import sandbox_stats, select


def register(table: CriTable, rt: Runtime) -> None:
    @table.unary("/runtime.v1.RuntimeService/PodSandboxStats", PodSandboxStatsRequest)
    async def pod_sandbox_stats(request: PodSandboxStatsRequest) -> PodSandboxStatsResponse:
        rec = rt.find_sandbox(request.pod_sandbox_id)
        return PodSandboxStatsResponse(stats=await sandbox_stats(rt, rec))

    @table.unary("/runtime.v1.RuntimeService/ListPodSandboxStats", ListPodSandboxStatsRequest)
    async def list_pod_sandbox_stats(
        request: ListPodSandboxStatsRequest,
    ) -> ListPodSandboxStatsResponse:
        f = request.filter if is_set(request.filter) else None
        picked = [r for r in rt.sandboxes.values() if r.status.state == "ready"]
        if f is not None:
            picked = select(picked, f.id, f.label_selector)
        # Each pod asks imaged for its containers' usage: ask for every pod at once, as
        # ListContainerStats does.
        out = await asyncio.gather(*(sandbox_stats(rt, rec) for rec in picked))
        return ListPodSandboxStatsResponse(stats=list(out))
