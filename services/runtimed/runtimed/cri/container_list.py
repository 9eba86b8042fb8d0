"""CRI `ListContainers` and `StreamContainers` with every filter of ContainerFilter: id
(or unique prefix), state, pod_sandbox_id (or prefix), label selector.

StreamContainers (CRIListStreaming, KEP 5825) sends the same selection in pages; both
replies are `repeated Container containers = 1`, so a page is the same framed entries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from crib_common.cri.runtime.v1 import ListContainersRequest, StreamContainersRequest
from crib_common.server import CriTable

from ..oci.spec import is_set
from ..daemon import Runtimed
from ..messages.listing import ListCache, container_entry, pages, select, wire_field
from ..messages.status import container_state
from ..node import Node
from ..store.records import ContainerRecord


def _filter_key(request: ListContainersRequest | StreamContainersRequest) -> Any:
    """The filter as a hashable tuple (None without one), read once: betterproto's
    attribute access costs microseconds, and a pod filter over 100 containers took 3 ms
    when it was read per container."""
    f = wire_field(request, "filter")
    if f is None:
        return None
    state = f.state.state if is_set(f.state) else None
    return f.id, f.pod_sandbox_id, state, tuple(sorted(dict(f.label_selector).items()))


def _select(node: Node, key: Any) -> list[ContainerRecord]:
    records = [r for r in node.containers.values() if r.status.state != "creating"]
    if key is not None:
        cid, pod_id, state, selector = key
        records = select(records, cid, dict(selector))
        if pod_id:
            records = [r for r in records if r.meta.pod_id.startswith(pod_id)]
        if state is not None:
            records = [r for r in records if container_state(r) == state]
    return records


def register(table: CriTable, runtimed: Runtimed) -> None:
    node = runtimed.node
    cache = ListCache()

    @table.unary("/runtime.v1.RuntimeService/ListContainers", ListContainersRequest)
    async def list_containers(request: ListContainersRequest) -> bytes:
        key = _filter_key(request)
        hit = cache.get(node.generation, key)
        if hit is not None:
            return hit
        # ListContainersResponse: `repeated Container containers = 1`, from cached framed
        # per-item encodings.
        return cache.put(key, b"".join([container_entry(r) for r in _select(node, key)]))

    @table.stream("/runtime.v1.RuntimeService/StreamContainers", StreamContainersRequest)
    def stream_containers(request: StreamContainersRequest) -> AsyncIterator[bytes]:
        # Chosen when the call arrives: a container made or removed meanwhile neither
        # repeats nor drops an item.
        return pages([container_entry(r) for r in _select(node, _filter_key(request))])
