"""CRI `ListContainers` with every filter of ContainerFilter: id (or unique prefix),
state, pod_sandbox_id (or prefix), label selector."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import ListContainersRequest
from crib_common.server import CriTable

from ..oci.spec import is_set
from ..service import Runtime
from ..views import RawMessage, container_item_bytes, container_state, labels_match, repeated_field


def register(table: CriTable, rt: Runtime) -> None:
    @table.unary("/runtime.v1.RuntimeService/ListContainers", ListContainersRequest)
    async def list_containers(request: ListContainersRequest) -> RawMessage:
        f = request.filter if is_set(request.filter) else None
        items = []
        for rec in list(rt.containers.values()):
            if rec.status.state == "creating":
                continue
            if f is not None:
                if f.id and not rec.meta.id.startswith(f.id):
                    continue
                if f.pod_sandbox_id and not rec.meta.pod_id.startswith(f.pod_sandbox_id):
                    continue
                if is_set(f.state) and container_state(rec) != f.state.state:
                    continue
                if f.label_selector and not labels_match(rec.meta.labels, f.label_selector):
                    continue
            items.append(container_item_bytes(rec))
        # ListContainersResponse: `repeated Container containers = 1`.
        return repeated_field(1, items)
