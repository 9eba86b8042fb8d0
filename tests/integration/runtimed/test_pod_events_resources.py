"""Pod-level events (GetContainerEvents for sandboxes, as containerd) with the pod's and its
containers' statuses on every event; pod-level resources on the pod cgroup, and
UpdatePodSandboxResources."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.support.images import wait_until

from .conftest import Cri

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def _pod_cgroup(cri: Cri, sid: str) -> str:
    info = json.loads(cri.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
        pod_sandbox_id=sid, verbose=True), timeout=10).info["info"])
    return str(info["cgroupParent"]).strip("/")


def _read(controller: str, cgroup: str, name: str) -> str:
    return Path(f"/sys/fs/cgroup/{controller}/{cgroup}/{name}").read_text().strip()


def test_pod_events_carry_statuses(cri: Cri, image: str) -> None:
    watch = cri.watch_events()
    events = watch.events
    sid, pod = cri.run_pod()
    cid = cri.create(sid, pod, image, "app", command=["sleep", "300"])
    cri.start(cid)
    cri.remove_pod(sid)
    assert wait_until(lambda: any(
        e.container_id == sid and e.container_event_type == api_pb2.CONTAINER_DELETED_EVENT
        for e in events), timeout=5)
    watch.stop()

    pod_events = [e for e in events if e.container_id == sid]
    assert [e.container_event_type for e in pod_events] == [
        api_pb2.CONTAINER_CREATED_EVENT, api_pb2.CONTAINER_STARTED_EVENT,
        api_pb2.CONTAINER_STOPPED_EVENT, api_pb2.CONTAINER_DELETED_EVENT]
    assert all(e.pod_sandbox_status.id == sid for e in pod_events)
    assert pod_events[1].pod_sandbox_status.state == api_pb2.SANDBOX_READY
    assert pod_events[2].pod_sandbox_status.state == api_pb2.SANDBOX_NOTREADY
    assert pod_events[0].created_at <= pod_events[-1].created_at
    # The pod's STOPPED event lists its (by then exited) container.
    stopped = {s.id: s.state for s in pod_events[2].containers_statuses}
    assert stopped == {cid: api_pb2.CONTAINER_EXITED}

    mine = [e for e in events if e.container_id == cid]
    assert [e.container_event_type for e in mine] == [
        api_pb2.CONTAINER_CREATED_EVENT, api_pb2.CONTAINER_STARTED_EVENT,
        api_pb2.CONTAINER_STOPPED_EVENT, api_pb2.CONTAINER_DELETED_EVENT]
    assert all(e.pod_sandbox_status.id == sid for e in mine)
    # Each carries the statuses of the pod's containers at that moment.
    assert [s.state for s in mine[0].containers_statuses] == [api_pb2.CONTAINER_CREATED]
    assert [s.state for s in mine[1].containers_statuses] == [api_pb2.CONTAINER_RUNNING]
    assert [s.state for s in mine[2].containers_statuses] == [api_pb2.CONTAINER_EXITED]
    assert mine[1].containers_statuses[0].id == cid
    assert list(mine[3].containers_statuses) == []  # it is gone


def test_pod_resources_on_the_pod_cgroup(cri: Cri, image: str) -> None:
    linux = api_pb2.LinuxPodSandboxConfig(
        resources=api_pb2.LinuxContainerResources(
            memory_limit_in_bytes=96 * MiB, cpu_shares=512, cpu_quota=50000,
            cpu_period=100000),
        overhead=api_pb2.LinuxContainerResources(memory_limit_in_bytes=32 * MiB,
                                                 cpu_shares=10, cpu_quota=10000,
                                                 cpu_period=100000))
    sid, pod = cri.run_pod(cri.pod_config(linux=linux))
    try:
        cg = _pod_cgroup(cri, sid)
        assert _read("memory", cg, "memory.limit_in_bytes") == str(128 * MiB)
        assert _read("cpu", cg, "cpu.shares") == "522"
        assert _read("cpu", cg, "cpu.cfs_quota_us") == "60000"
        assert _read("cpu", cg, "cpu.cfs_period_us") == "100000"
        # The pod's containers live below it, so they are bounded by it.
        cid = cri.create(sid, pod, image, "app", command=["sleep", "300"])
        cri.start(cid)
        info = json.loads(cri.rt.ContainerStatus(api_pb2.ContainerStatusRequest(
            container_id=cid, verbose=True), timeout=10).info["info"])
        assert info["cgroupPath"].strip("/").startswith(cg + "/")

        # Resize: a higher memory limit and no CPU quota any more.
        cri.rt.UpdatePodSandboxResources(api_pb2.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=sid, resources=api_pb2.LinuxContainerResources(
                memory_limit_in_bytes=256 * MiB, cpu_shares=2048)), timeout=10)
        assert _read("memory", cg, "memory.limit_in_bytes") == str(256 * MiB)
        assert _read("cpu", cg, "cpu.shares") == "2048"
        assert _read("cpu", cg, "cpu.cfs_quota_us") == "-1"
        # Lower again, below the old one.
        cri.rt.UpdatePodSandboxResources(api_pb2.UpdatePodSandboxResourcesRequest(
            pod_sandbox_id=sid, resources=api_pb2.LinuxContainerResources(
                memory_limit_in_bytes=64 * MiB)), timeout=10)
        assert _read("memory", cg, "memory.limit_in_bytes") == str(64 * MiB)

        with pytest.raises(grpc.RpcError) as err:
            cri.rt.UpdatePodSandboxResources(api_pb2.UpdatePodSandboxResourcesRequest(
                pod_sandbox_id="f" * 64), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        cri.remove_pod(sid)
    assert not Path(f"/sys/fs/cgroup/memory/{cg}").exists()


def test_pod_stats_network_without_a_process(cri: Cri, image: str) -> None:
    """A pod with no infra process (own PID namespaces, no pause image) and no running
    container still reports its network, read through its network namespace; its
    containers' stats are in ListPodSandboxStats."""
    sec = api_pb2.LinuxSandboxSecurityContext(
        namespace_options=api_pb2.NamespaceOption(pid=api_pb2.CONTAINER))
    sid, pod = cri.run_pod(cri.pod_config(linux=api_pb2.LinuxPodSandboxConfig(
        security_context=sec)))
    try:
        info = json.loads(cri.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
            pod_sandbox_id=sid, verbose=True), timeout=10).info["info"])
        assert info["pid"] == 0
        st = cri.rt.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id=sid),
                                    timeout=10).stats
        assert st.linux.network.default_interface.name == "eth0"
        assert [i.name for i in st.linux.network.interfaces] == ["eth0"]
        assert list(st.linux.containers) == []
        cid = cri.create(sid, pod, image, "app", command=["sleep", "300"])
        cri.start(cid)
        listed = cri.rt.ListPodSandboxStats(api_pb2.ListPodSandboxStatsRequest(
            filter=api_pb2.PodSandboxStatsFilter(id=sid)), timeout=10).stats
        assert [s.attributes.id for s in listed] == [sid]
        assert [c.attributes.id for c in listed[0].linux.containers] == [cid]
        assert listed[0].linux.containers[0].memory.working_set_bytes.value > 0
        assert listed[0].linux.network.default_interface.name == "eth0"
    finally:
        cri.remove_pod(sid)
