"""List replies built from cached per-item encodings decode like betterproto's own."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import ContainerFilter, ListContainersRequest, ListContainersResponse
from runtimed.store.records import ContainerMeta, ContainerRecord
from runtimed.messages.listing import (
    ListCache,
    container_entry,
    container_item_bytes,
    forget_item,
    wire_field,
)
from runtimed.messages.status import container_item


def test_pre_encoded_list_matches_betterproto() -> None:
    recs = [ContainerRecord(meta=ContainerMeta(
        id=f"{i:064x}", pod_id="a" * 64, name=f"c{i}", handler="runc", created_at=i + 1,
        image="img", bundle="/b", labels={"k": str(i)}, annotations={"a": "b"}))
        for i in range(300)]
    for r in recs:
        r.status.state = "running"
    data = b"".join(container_entry(r) for r in recs)
    assert data == bytes(ListContainersResponse(containers=[container_item(r) for r in recs]))
    parsed = ListContainersResponse().parse(data)
    assert [c.metadata.name for c in parsed.containers] == [f"c{i}" for i in range(300)]
    # A state change re-encodes the item.
    recs[0].status.state = "exited"
    assert container_item_bytes(recs[0]) == bytes(container_item(recs[0]))
    forget_item(recs[0].meta.id)


def test_framed_entries_and_list_cache() -> None:
    recs = [ContainerRecord(meta=ContainerMeta(
        id=f"{i:064x}", pod_id="b" * 64, name=f"e{i}", handler="runc", created_at=i + 1,
        image="img", bundle="/b")) for i in range(3)]
    for r in recs:
        r.status.state = "created"
    assert b"".join(container_entry(r) for r in recs) == \
        bytes(ListContainersResponse(containers=[container_item(r) for r in recs]))
    cache = ListCache()
    assert cache.get(1, None) is None
    reply = cache.put(None, b"")
    assert cache.get(1, None) is reply
    assert cache.get(1, ("x",)) is None
    assert cache.get(2, None) is None  # a new generation drops every reply
    for r in recs:
        forget_item(r.meta.id)


def test_wire_field_does_not_build_defaults() -> None:
    unset = ListContainersRequest().parse(b"")
    assert wire_field(unset, "filter") is None
    data = bytes(ListContainersRequest(filter=ContainerFilter(pod_sandbox_id="p")))
    got = wire_field(ListContainersRequest().parse(data), "filter")
    assert got is not None and got.pod_sandbox_id == "p"
    # An empty filter on the wire is still a filter (it matches everything).
    empty = b"\x0a\x00"  # field 1 (filter), zero length
    assert wire_field(ListContainersRequest().parse(empty), "filter") is not None
