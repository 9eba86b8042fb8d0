"""List and status replies built from cached encodings are what betterproto writes."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import (
    ContainerFilter,
    ContainerStatusResponse,
    ListContainersRequest,
    ListContainersResponse,
    PodSandboxStatusResponse,
)
from runtimed.store.records import ContainerMeta, ContainerRecord, SandboxMeta, SandboxRecord
from runtimed.messages.listing import (
    ListCache,
    container_entry,
    container_item_bytes,
    container_status_reply,
    forget_item,
    sandbox_status_reply,
    wire_field,
)
from runtimed.messages.status import container_item, container_status, sandbox_status


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


def _pod() -> SandboxRecord:
    rec = SandboxRecord(meta=SandboxMeta(
        id="c" * 64, name="p", namespace="ns", uid="u", handler="runc", created_at=7,
        labels={"l": "1"}, annotations={"a": "2"}))
    rec.status.state = "ready"
    rec.status.ips = ["10.0.0.2", "fd00::2"]
    return rec


def test_status_replies_match_betterproto_and_follow_changes() -> None:
    pod = _pod()
    ctrs = [ContainerRecord(meta=ContainerMeta(
        id=f"{i:064x}", pod_id=pod.meta.id, name=f"s{i}", handler="runc", created_at=i + 1,
        image="img", bundle="/b", mounts=[{"container_path": "/d", "host_path": "/h"}]))
        for i in range(3)]
    for c in ctrs:
        c.status.state = "running"
        c.status.started_at = 5
    ts = 1_700_000_000_000_000_000
    want = PodSandboxStatusResponse(status=sandbox_status(pod),
                                    containers_statuses=[container_status(c) for c in ctrs],
                                    timestamp=ts)
    assert sandbox_status_reply(pod, ctrs, ts) == bytes(want)
    assert container_status_reply(ctrs[0]) == \
        bytes(ContainerStatusResponse(status=container_status(ctrs[0])))
    # Every status change shows in the next reply (the cache is keyed by the status).
    ctrs[0].status.state = "exited"
    ctrs[0].status.exit_code = 3
    ctrs[0].status.resources = {"cpu_shares": 512}
    pod.status.state = "notready"
    assert container_status_reply(ctrs[0]) == \
        bytes(ContainerStatusResponse(status=container_status(ctrs[0])))
    assert ContainerStatusResponse().parse(
        container_status_reply(ctrs[0])).status.exit_code == 3
    assert sandbox_status_reply(pod, ctrs, ts) == bytes(PodSandboxStatusResponse(
        status=sandbox_status(pod),
        containers_statuses=[container_status(c) for c in ctrs], timestamp=ts))
    # A pod without containers, and the pod's status alone.
    assert sandbox_status_reply(pod, [], ts) == bytes(
        PodSandboxStatusResponse(status=sandbox_status(pod), timestamp=ts))
    for oid in [pod.meta.id, *(c.meta.id for c in ctrs)]:
        forget_item(oid)
