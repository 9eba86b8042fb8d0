"""The kubelet's cgroup tree and the CRI metrics, through the independent grpcio client.

The kubelet (cgroupfs driver, cgroupsPerQOS) makes /kubepods/burstable/pod<uid> in every
v1 hierarchy, limits it, and names it as the pod's cgroup_parent. runtimed must put the
pod's containers below it, under their bare container ID, so the pod's limit binds them,
and leave that cgroup to the kubelet when the pod goes. Only the test's own pod cgroup
gets a memory limit (64 MiB), and it is removed afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from tests.support.images import wait_until
from tests.support.stack import rmdir_tree

from .conftest import Cri

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
V1 = Path("/sys/fs/cgroup")
# The hierarchies the kubelet's cgroupfs manager creates a pod cgroup in.
CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio", "hugetlb", "cpuset", "freezer",
               "devices", "systemd")


@contextlib.contextmanager
def kubelet_pod_cgroup(memory_limit: int) -> Iterator[str]:
    """/kubepods/burstable/pod<uid> made the kubelet's way, with a memory limit. Afterwards
    the pod cgroup is removed from every hierarchy (runc also makes the containers' in
    the hybrid cgroup2 tree), and so are /kubepods/burstable and /kubepods where this
    made them (children first; a process left behind is killed first)."""
    uid = uuid.uuid4()
    parts = ["kubepods", "burstable", f"pod{uid}"]
    path = "/" + "/".join(parts)
    ancestors = ["/".join(parts[:i]) for i in (1, 2)]
    made_ancestors = [a for a in ancestors if not (V1 / "memory" / a).is_dir()]
    for ctrl in CONTROLLERS:
        h = V1 / ctrl
        if not h.is_dir() or not (h / "cgroup.procs").exists():
            continue
        d = h
        for part in parts:
            d = d / part
            if d.is_dir():
                continue
            d.mkdir()
            if ctrl == "cpuset":
                # A new cpuset cgroup starts empty; the kubelet copies its parent's.
                for name in ("cpuset.cpus", "cpuset.mems"):
                    (d / name).write_text((d.parent / name).read_text())
    (V1 / "memory" / path.strip("/") / "memory.limit_in_bytes").write_text(str(memory_limit))
    try:
        yield path
    finally:
        for h in V1.iterdir():
            top = h / path.strip("/")
            if not top.is_dir():
                continue
            for procs in top.rglob("cgroup.procs"):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            rmdir_tree(top)
            for a in reversed(made_ancestors):
                with contextlib.suppress(OSError):
                    (h / a).rmdir()


def _verbose(cri: Cri, cid: str) -> dict[str, object]:
    return dict(json.loads(cri.rt.ContainerStatus(api_pb2.ContainerStatusRequest(
        container_id=cid, verbose=True), timeout=10).info["info"]))


def _cgroup_of(pid: int, controller: str) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            return path
    raise AssertionError(f"no {controller} line in /proc/{pid}/cgroup")


def test_containers_run_in_the_kubelets_pod_cgroup(cri: Cri, image: str) -> None:
    with kubelet_pod_cgroup(64 * MiB) as parent:
        pod_cfg = cri.pod_config(linux=api_pb2.LinuxPodSandboxConfig(
            cgroup_parent=parent,
            # The kubelet limits its own pod cgroup: crib must not rewrite it.
            resources=api_pb2.LinuxContainerResources(memory_limit_in_bytes=512 * MiB)))
        sid, pod = cri.run_pod(pod_cfg)
        try:
            cid = cri.create(sid, pod, image, "app", command=["sleep", "300"])
            cri.start(cid)
            pid = int(str(_verbose(cri, cid)["pid"]))
            for ctrl in ("memory", "cpuacct", "pids"):
                assert _cgroup_of(pid, ctrl) == f"{parent}/{cid}"
            mem = V1 / "memory" / parent.strip("/")
            assert (mem / "memory.limit_in_bytes").read_text().strip() == str(64 * MiB)
            stat = dict(line.split() for line in (mem / cid / "memory.stat").read_text()
                        .splitlines())
            assert int(stat["hierarchical_memory_limit"]) == 64 * MiB

            # A container with no limit of its own that wants more than the pod has:
            # the pod's 64 MiB end it.
            hog = cri.create(sid, pod, image, "hog", command=[
                "awk", 'BEGIN { s = "xxxxxxxxxxxxxxxx"; while (1) s = s s }'])
            cri.start(hog)
            st = cri.wait_exit(hog, timeout=60)
            assert st.state == api_pb2.CONTAINER_EXITED and st.exit_code == 137
            assert st.reason == "OOMKilled"
            assert int((mem / "memory.max_usage_in_bytes").read_text()) <= 64 * MiB
            assert _cgroup_of(pid, "memory") == f"{parent}/{cid}"  # the other one lives

            # Stats and metrics read the kubelet's pod cgroup.
            stats = cri.rt.PodSandboxStats(api_pb2.PodSandboxStatsRequest(
                pod_sandbox_id=sid), timeout=10).stats
            assert stats.linux.memory.usage_bytes.value > 0
        finally:
            cri.remove_pod(sid)
        # The containers' cgroups are gone; the pod cgroup stays the kubelet's.
        assert (V1 / "memory" / parent.strip("/")).is_dir()
        assert not (V1 / "memory" / parent.strip("/") / cid).exists()


def test_runtime_config_and_status_report_cgroups(cri: Cri) -> None:
    reply = cri.rt.RuntimeConfig(api_pb2.RuntimeConfigRequest(), timeout=10)
    assert reply.linux.cgroup_driver == api_pb2.CGROUPFS
    status = cri.rt.Status(api_pb2.StatusRequest(verbose=True), timeout=10)
    cg = json.loads(status.info["runtimed"])["details"]["cgroups"]
    assert cg["driver"] == "cgroupfs" and cg["version"] == 1 and cg["mode"] == "hybrid"
    assert set(cg["oom_score_adj"]) == {"cap_sys_resource", "own_score", "restricted"}


def test_metrics_of_a_running_pod(cri: Cri, image: str) -> None:
    descriptors = cri.rt.ListMetricDescriptors(api_pb2.ListMetricDescriptorsRequest(),
                                               timeout=10).descriptors
    by_name = {d.name: d for d in descriptors}
    for name in ("container_cpu_usage_seconds_total", "container_memory_working_set_bytes",
                 "container_network_receive_bytes_total", "container_spec_memory_limit_bytes",
                 "container_fs_usage_bytes", "container_threads_max"):
        assert name in by_name and by_name[name].help
    assert list(by_name["container_memory_rss"].label_keys)[:6] == [
        "container", "id", "image", "name", "namespace", "pod"]

    sid, pod = cri.run_pod()
    try:
        cid = cri.create(sid, pod, image, "busy", command=[
            "sh", "-c", "while :; do :; done"],
            linux=api_pb2.LinuxContainerConfig(resources=api_pb2.LinuxContainerResources(
                memory_limit_in_bytes=48 * MiB)))
        cri.start(cid)

        def metrics() -> api_pb2.PodSandboxMetrics:
            reply = cri.rt.ListPodSandboxMetrics(api_pb2.ListPodSandboxMetricsRequest(),
                                                 timeout=10)
            return next(m for m in reply.pod_metrics if m.pod_sandbox_id == sid)

        def cpu_seconds() -> int:
            for c in metrics().container_metrics:
                for m in c.metrics:
                    if m.name == "container_cpu_usage_seconds_total":
                        return int(m.value.value)
            return -1

        assert wait_until(lambda: cpu_seconds() >= 1, timeout=60)
        pm = metrics()
        (cm,) = pm.container_metrics
        assert cm.container_id == cid
        values = {m.name: m for m in cm.metrics}
        for m in cm.metrics:
            assert len(m.label_values) == len(by_name[m.name].label_keys), m.name
        ws = values["container_memory_working_set_bytes"]
        assert ws.value.value > 0 and ws.metric_type == api_pb2.GAUGE
        assert values["container_cpu_usage_seconds_total"].metric_type == api_pb2.COUNTER
        assert values["container_spec_memory_limit_bytes"].value.value == 48 * MiB
        assert values["container_processes"].value.value == 1
        assert values["container_cpu_usage_seconds_total"].value.value >= 1
        labels = dict(zip(by_name["container_memory_rss"].label_keys,
                          values["container_memory_rss"].label_values))
        assert labels["container"] == "busy" and labels["name"] == cid
        assert labels["pod"] == pod.metadata.name and labels["namespace"] == "crib-test"
        assert labels["id"].endswith("/" + cid)
        # The pod's own: its network interface.
        net = [m for m in pm.metrics if m.name == "container_network_receive_bytes_total"]
        assert [dict(zip(by_name[m.name].label_keys, m.label_values))["interface"]
                for m in net] == ["eth0"]
    finally:
        cri.remove_pod(sid)
