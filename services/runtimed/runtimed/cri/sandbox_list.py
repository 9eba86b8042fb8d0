"""CRI `ListPodSandbox` and `StreamPodSandboxes` with every filter of PodSandboxFilter:
id (or unique prefix), state, label selector.

StreamPodSandboxes (CRIListStreaming, KEP 5825) sends the same selection in pages; both
replies carry the pods as field 1, so a page is the same framed entries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from crib_common.cri.runtime.v1 import ListPodSandboxRequest, StreamPodSandboxesRequest
from crib_common.server import CriTable

from ..oci.spec import is_set
from ..daemon import Runtimed
from ..messages.listing import ListCache, pages, sandbox_entry, select, wire_field
from ..messages.status import sandbox_state
from ..node import Node
from ..store.records import SandboxRecord


def _filter_key(request: ListPodSandboxRequest | StreamPodSandboxesRequest) -> Any:
    """The filter as a hashable tuple (None without one), read once (betterproto
    attribute access is slow)."""
    f = wire_field(request, "filter")
    if f is None:
        return None
    state = f.state.state if is_set(f.state) else None
    return f.id, state, tuple(sorted(dict(f.label_selector).items()))


def _select(node: Node, key: Any) -> list[SandboxRecord]:
    records = [r for r in node.sandboxes.values() if r.status.state != "creating"]
    if key is not None:
        sid, state, selector = key
        records = select(records, sid, dict(selector))
        if state is not None:
            records = [r for r in records if sandbox_state(r) == state]
    return records


def register(table: CriTable, runtimed: Runtimed) -> None:
    node = runtimed.node
    cache = ListCache()

    @table.unary("/runtime.v1.RuntimeService/ListPodSandbox", ListPodSandboxRequest)
    async def list_pod_sandbox(request: ListPodSandboxRequest) -> bytes:
        key = _filter_key(request)
        hit = cache.get(node.generation, key)
        if hit is not None:
            return hit
        # ListPodSandboxResponse: `repeated PodSandbox items = 1`.
        return cache.put(key, b"".join([sandbox_entry(r) for r in _select(node, key)]))

    @table.stream("/runtime.v1.RuntimeService/StreamPodSandboxes", StreamPodSandboxesRequest)
    def stream_pod_sandboxes(request: StreamPodSandboxesRequest) -> AsyncIterator[bytes]:
        # StreamPodSandboxesResponse: `repeated PodSandbox pod_sandboxes = 1`.
        return pages([sandbox_entry(r) for r in _select(node, _filter_key(request))])
