"""CRI `ListPodSandbox` with every filter of PodSandboxFilter: id (or unique prefix),
state, label selector."""

from __future__ import annotations

from typing import Any

from crib_common.cri.runtime.v1 import ListPodSandboxRequest
from crib_common.server import CriTable

from ..oci.spec import is_set
from ..service import Runtime
from ..views import ListCache, sandbox_entry, sandbox_state, select, wire_field


def register(table: CriTable, rt: Runtime) -> None:
    cache = ListCache()

    @table.unary("/runtime.v1.RuntimeService/ListPodSandbox", ListPodSandboxRequest)
    async def list_pod_sandbox(request: ListPodSandboxRequest) -> bytes:
        f = wire_field(request, "filter")
        key: Any = None
        if f is not None:
            # The filter is read once (betterproto attribute access is slow).
            sid, selector = f.id, dict(f.label_selector)
            state = f.state.state if is_set(f.state) else None
            key = (sid, state, tuple(sorted(selector.items())))
        hit = cache.get(rt.generation, key)
        if hit is not None:
            return hit
        records = [r for r in rt.sandboxes.values() if r.status.state != "creating"]
        if f is not None:
            records = select(records, sid, selector)
            if state is not None:
                records = [r for r in records if sandbox_state(r) == state]
        # ListPodSandboxResponse: `repeated PodSandbox items = 1`.
        return cache.put(key, b"".join([sandbox_entry(r) for r in records]))
