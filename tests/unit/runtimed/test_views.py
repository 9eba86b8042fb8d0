"""List replies built from cached per-item encodings decode like betterproto's own."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import ListContainersResponse
from crib_common.wire import encode_message
from runtimed.store.records import ContainerMeta, ContainerRecord
from runtimed.views import container_item, container_item_bytes, forget_item, repeated_field


def test_pre_encoded_list_matches_betterproto() -> None:
    recs = [ContainerRecord(meta=ContainerMeta(
        id=f"{i:064x}", pod_id="a" * 64, name=f"c{i}", handler="runc", created_at=i + 1,
        image="img", bundle="/b", labels={"k": str(i)}, annotations={"a": "b"}))
        for i in range(300)]
    for r in recs:
        r.status.state = "running"
    raw = repeated_field(1, [container_item_bytes(r) for r in recs])
    # The daemon's encoder must pass pre-encoded replies through untouched.
    data = encode_message(raw)  # type: ignore[arg-type]
    assert data == bytes(ListContainersResponse(containers=[container_item(r) for r in recs]))
    parsed = ListContainersResponse().parse(data)
    assert [c.metadata.name for c in parsed.containers] == [f"c{i}" for i in range(300)]
    # A state change re-encodes the item.
    recs[0].status.state = "exited"
    assert container_item_bytes(recs[0]) == bytes(container_item(recs[0]))
    forget_item(recs[0].meta.id)
