"""CRIListStreaming (KEP 5825) through the gateway: StreamPodSandboxes, StreamContainers,
StreamContainerStats, StreamPodSandboxStats and StreamPodSandboxMetrics give the same items
as their List RPCs, each exactly once, in pages of at least one, then EOF.

The PyPI grpcio stubs predate these RPCs, so grpcio's generic server-streaming call carries
them, with our generated messages for the bytes."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from cri_api.v1 import api_pb2

from crib_common.cri.runtime.v1 import (
    ContainerFilter,
    ContainerStateValue,
    ContainerStatsFilter,
    PodSandboxFilter,
    PodSandboxStatsFilter,
    StreamContainersRequest,
    StreamContainersResponse,
    StreamContainerStatsRequest,
    StreamContainerStatsResponse,
    StreamPodSandboxesRequest,
    StreamPodSandboxesResponse,
    StreamPodSandboxMetricsRequest,
    StreamPodSandboxMetricsResponse,
    StreamPodSandboxStatsRequest,
    StreamPodSandboxStatsResponse,
)
from runtimed.messages.listing import pages

from .conftest import Cri

pytestmark = pytest.mark.integration

SVC = "/runtime.v1.RuntimeService/"


def _stream(cri: Cri, method: str, request: Any, reply_type: type[Any]) -> list[Any]:
    call = cri.channel.unary_stream(SVC + method, request_serializer=bytes,
                                    response_deserializer=lambda raw: reply_type().parse(raw))
    return list(call(request, timeout=30))


def test_streams_match_the_lists(cri: Cri, image: str) -> None:
    labelled = cri.pod_config(labels={"crib-stream": "yes"})
    sid_a, pod_a = cri.run_pod(labelled)
    sid_b, pod_b = cri.run_pod()
    try:
        running = [cri.create(sid_a, pod_a, image, f"run{i}", command=["sleep", "300"])
                   for i in range(2)]
        for cid in running:
            cri.start(cid)
        created = cri.create(sid_b, pod_b, image, "idle", command=["sleep", "300"])

        pods = _stream(cri, "StreamPodSandboxes", StreamPodSandboxesRequest(),
                       StreamPodSandboxesResponse)
        assert pods and all(page.pod_sandboxes for page in pods)
        ids = Counter(p.id for page in pods for p in page.pod_sandboxes)
        listed = cri.rt.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
        assert ids == Counter(p.id for p in listed) and {sid_a, sid_b} <= set(ids)
        only_a = _stream(cri, "StreamPodSandboxes", StreamPodSandboxesRequest(
            filter=PodSandboxFilter(label_selector={"crib-stream": "yes"})),
            StreamPodSandboxesResponse)
        assert [p.id for page in only_a for p in page.pod_sandboxes] == [sid_a]

        containers = _stream(cri, "StreamContainers", StreamContainersRequest(),
                             StreamContainersResponse)
        ids = Counter(c.id for page in containers for c in page.containers)
        assert ids == Counter(c.id for c in cri.rt.ListContainers(
            api_pb2.ListContainersRequest()).containers)
        assert set(running) | {created} <= set(ids) and max(ids.values()) == 1
        in_a = _stream(cri, "StreamContainers", StreamContainersRequest(
            filter=ContainerFilter(pod_sandbox_id=sid_a[:12])), StreamContainersResponse)
        assert sorted(c.id for page in in_a for c in page.containers) == sorted(running)
        made = _stream(cri, "StreamContainers", StreamContainersRequest(
            filter=ContainerFilter(state=ContainerStateValue(state=0))),  # CONTAINER_CREATED
            StreamContainersResponse)
        assert [c.id for page in made for c in page.containers] == [created]

        stats = _stream(cri, "StreamContainerStats", StreamContainerStatsRequest(),
                        StreamContainerStatsResponse)
        got = sorted(s.attributes.id for page in stats for s in page.container_stats)
        assert got == sorted(s.attributes.id for s in cri.rt.ListContainerStats(
            api_pb2.ListContainerStatsRequest()).stats)
        assert set(running) <= set(got)
        one = _stream(cri, "StreamContainerStats", StreamContainerStatsRequest(
            filter=ContainerStatsFilter(id=running[0])), StreamContainerStatsResponse)
        [[only]] = [page.container_stats for page in one]
        assert only.attributes.id == running[0] and only.memory.working_set_bytes.value > 0

        pod_stats = _stream(cri, "StreamPodSandboxStats", StreamPodSandboxStatsRequest(
            filter=PodSandboxStatsFilter(id=sid_a)), StreamPodSandboxStatsResponse)
        [[a_stats]] = [page.pod_sandbox_stats for page in pod_stats]
        assert a_stats.attributes.id == sid_a
        assert sorted(c.attributes.id for c in a_stats.linux.containers) == sorted(running)

        # Metrics of every ready pod, in pages, then EOF.
        metrics = _stream(cri, "StreamPodSandboxMetrics", StreamPodSandboxMetricsRequest(),
                          StreamPodSandboxMetricsResponse)
        streamed = {m.pod_sandbox_id: m for page in metrics for m in page.pod_sandbox_metrics}
        assert {sid_a, sid_b} <= set(streamed)
        # Each running container of pod a has metrics (its cgroup exists).
        assert sorted(c.container_id for c in streamed[sid_a].container_metrics) == sorted(
            c.attributes.id for c in a_stats.linux.containers)
        # A filter matching nothing: no message at all, then EOF.
        assert _stream(cri, "StreamContainers", StreamContainersRequest(
            filter=ContainerFilter(id="f" * 64)), StreamContainersResponse) == []
    finally:
        cri.remove_pod(sid_a)
        cri.remove_pod(sid_b)


async def test_pages_split_by_count_and_bytes_and_keep_every_entry() -> None:
    entries = [bytes([i]) * (i + 1) for i in range(10)]
    by_count = [p async for p in pages(entries, max_items=3)]
    assert by_count == [b"".join(entries[i:i + 3]) for i in (0, 3, 6, 9)]
    by_bytes = [p async for p in pages(entries, max_items=100, max_bytes=10)]
    assert b"".join(by_bytes) == b"".join(entries)
    assert all(len(p) <= 10 for p in by_bytes[:-1]) and len(by_bytes) > 3
    # An entry larger than the byte limit still goes, alone in its page.
    assert [p async for p in pages([b"x" * 50, b"y"], max_bytes=10)] == [b"x" * 50, b"y"]
    assert [p async for p in pages([])] == []
