"""The whole crib stack on cgroup v2, on this hybrid host: runtimed (and with it conmon and
runc) runs in a private mount namespace where cgroup2 is mounted on /sys/fs/cgroup, so it
finds a unified host and runc runs containers in the unified tree. That tree is the
host's one cgroup2 hierarchy (its /sys/fs/cgroup/unified), which owns no controller:
pods and containers run, CPU comes from cpu.stat, teardown ends the pod cgroup with
cgroup.kill, and a memory limit is refused naming the controller. No controller of the
host is touched; only the stack's own cgroups are made, and they are gone at the end.

Not provable here: memory, io and pids readings, limits and OOM on v2 (no controller is
enabled in this tree); those are covered by the unit tests on synthetic v2 trees."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.support.images import wait_until
from tests.support.stack import Stack

from .conftest import Cri, started

pytestmark = pytest.mark.integration

HOST_UNIFIED = Path("/sys/fs/cgroup/unified")
MiB = 1024 * 1024
# runtimed's argv is put after this: its own mount namespace (slave, so netd's netns
# mounts still reach it; nothing it mounts goes back), cgroup2 on /sys/fs/cgroup.
WRAPPER = ["unshare", "--mount", "--propagation", "slave", "sh", "-c",
           'mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec "$@"', "sh"]


@pytest.fixture(scope="module")
def v2cri(busybox_image: str) -> Iterator[tuple[Cri, Stack, str]]:
    if shutil.which("unshare") is None or not (HOST_UNIFIED / "cgroup.procs").exists():
        pytest.skip("needs unshare(1) and the hybrid cgroup2 at /sys/fs/cgroup/unified")
    stack = Stack.create("process")  # a wrapper per daemon: separate processes
    stack.wrappers["runtimed"] = WRAPPER
    with started(stack, busybox_image) as client:
        yield client, stack, busybox_image


def _host_path(cgroup: str) -> Path:
    return HOST_UNIFIED / cgroup.strip("/")


def test_pods_and_containers_on_cgroup_v2(v2cri: tuple[Cri, Stack, str]) -> None:
    cri, stack, image = v2cri
    status = cri.rt.Status(api_pb2.StatusRequest(verbose=True), timeout=10)
    cg = json.loads(status.info["runtimed"])["details"]["cgroups"]
    assert cg["mode"] == "unified" and cg["version"] == 2 and cg["controllers"] == []

    sid, pod = cri.run_pod()
    stray: subprocess.Popen[bytes] | None = None
    try:
        cid = cri.create(sid, pod, image, "busy", command=["sh", "-c", "while :; do :; done"])
        cri.start(cid)
        info = json.loads(cri.rt.ContainerStatus(api_pb2.ContainerStatusRequest(
            container_id=cid, verbose=True), timeout=10).info["info"])
        pid = int(info["pid"])
        pod_cgroup = f"{stack.cgroup_parent}/crib-{sid[:16]}"
        # The unified line ("0::") of the container's process: its own cgroup, named by
        # its ID, below the pod's, in the v2 tree runc used.
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        assert f"0::{pod_cgroup}/{cid}" in lines
        assert (_host_path(f"{pod_cgroup}/{cid}") / "cgroup.procs").read_text().split() \
            == [str(pid)]

        # CPU from cpu.stat (no cpu controller needed for usage_usec).
        def cpu_ns() -> int:
            return int(cri.rt.ContainerStats(api_pb2.ContainerStatsRequest(
                container_id=cid), timeout=10).stats.cpu.usage_core_nano_seconds.value)

        assert wait_until(lambda: cpu_ns() > 200_000_000, timeout=30)
        reading = cpu_ns()
        usec = dict(line.split() for line in
                    (_host_path(f"{pod_cgroup}/{cid}") / "cpu.stat").read_text().splitlines())
        assert 0 < reading <= int(usec["usage_usec"]) * 1000
        pod_cpu = cri.rt.PodSandboxStats(api_pb2.PodSandboxStatsRequest(
            pod_sandbox_id=sid), timeout=10).stats.linux.cpu.usage_core_nano_seconds.value
        assert pod_cpu >= reading
        metrics = cri.rt.ListPodSandboxMetrics(api_pb2.ListPodSandboxMetricsRequest(),
                                               timeout=10)
        (pm,) = [m for m in metrics.pod_metrics if m.pod_sandbox_id == sid]
        (cm,) = pm.container_metrics
        assert any(m.name == "container_cpu_usage_seconds_total" for m in cm.metrics)

        # A process that is in the pod cgroup but in no container: only the pod's
        # teardown (cgroup.kill of the pod cgroup) ends it.
        stray = subprocess.Popen(["sleep", "1000"])
        (_host_path(pod_cgroup) / "cgroup.procs").write_text(str(stray.pid))
    finally:
        cri.remove_pod(sid)
    assert stray is not None
    assert stray.wait(timeout=10) == -signal.SIGKILL
    assert not _host_path(pod_cgroup).exists()
    assert not Path(f"/proc/{pid}").exists()


def test_memory_limit_refused_without_the_controller(v2cri: tuple[Cri, Stack, str]) -> None:
    cri, stack, _image = v2cri
    config = cri.pod_config(linux=api_pb2.LinuxPodSandboxConfig(
        resources=api_pb2.LinuxContainerResources(memory_limit_in_bytes=64 * MiB)))
    with pytest.raises(grpc.RpcError) as err:
        cri.run_pod(config)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "memory" in (err.value.details() or "")
    # Rolled back: no pod, no cgroup left in the v2 tree.
    assert not [p for p in cri.rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(),
                                                  timeout=10).items
                if p.metadata.name == config.metadata.name]
    top = _host_path(stack.cgroup_parent)
    assert not top.is_dir() or not [p for p in top.iterdir() if p.is_dir()]


# runc only: crun 1.8 on v2 raises RLIMIT_MEMLOCK for its device eBPF program, which
# needs CAP_SYS_RESOURCE, missing on this machine (an ordinary crun pod fails the same).
@pytest.mark.parametrize("handler", ["runc"])
def test_user_namespaced_pod_on_cgroup_v2(v2cri: tuple[Cri, Stack, str], handler: str) -> None:
    """A pod user namespace on the unified tree, with runtimed in a mount namespace of
    its own (netd gets the user namespace by its holder's /proc path, not the pin it
    cannot see): the runtime mounts /sys/fs/cgroup for a container in a user namespace
    it did not make (no cgroup namespace of its own)."""
    cri, _stack, image = v2cri
    mapping = [api_pb2.IDMapping(host_id=65536 * 80, container_id=0, length=65536)]
    ns = api_pb2.NamespaceOption(userns_options=api_pb2.UserNamespace(
        mode=api_pb2.POD, uids=mapping, gids=mapping))
    pod = cri.pod_config(linux=api_pb2.LinuxPodSandboxConfig(
        security_context=api_pb2.LinuxSandboxSecurityContext(namespace_options=ns)))
    sid, _ = cri.run_pod(pod, handler=handler)
    try:
        linux = api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(namespace_options=ns))
        cid = cri.create(sid, pod, image, "u", command=["sh", "-c",
                         "cat /proc/self/uid_map; ls /sys/fs/cgroup/cgroup.procs"],
                         linux=linux)
        cri.start(cid)
        st = cri.wait_exit(cid, timeout=30)
        out = Path(st.log_path).read_text()
        assert st.exit_code == 0, out
        assert f"0 {65536 * 80} 65536" in " ".join(out.split())
    finally:
        cri.remove_pod(sid)
