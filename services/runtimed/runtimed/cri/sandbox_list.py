"""CRI `ListPodSandbox` with every filter of PodSandboxFilter: id (or unique prefix),
state, label selector."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import ListPodSandboxRequest
from crib_common.server import CriTable

from ..oci.spec import is_set
from ..service import Runtime
from ..views import RawMessage, labels_match, repeated_field, sandbox_item_bytes, sandbox_state


def register(table: CriTable, rt: Runtime) -> None:
    @table.unary("/runtime.v1.RuntimeService/ListPodSandbox", ListPodSandboxRequest)
    async def list_pod_sandbox(request: ListPodSandboxRequest) -> RawMessage:
        f = request.filter if is_set(request.filter) else None
        items = []
        for rec in list(rt.sandboxes.values()):
            if rec.status.state == "creating":
                continue
            if f is not None:
                if f.id and not rec.meta.id.startswith(f.id):
                    continue
                if is_set(f.state) and sandbox_state(rec) != f.state.state:
                    continue
                if f.label_selector and not labels_match(rec.meta.labels, f.label_selector):
                    continue
            items.append(sandbox_item_bytes(rec))
        # ListPodSandboxResponse: `repeated PodSandbox items = 1`.
        return repeated_field(1, items)
