"""A configured pause image (settings.runtimed.pause_image) as the pods' infra container:
pulled through imaged on first use, run from its own snapshot under conmon, holding the
pod's namespaces; StopPodSandbox kills it, RemovePodSandbox removes it and its snapshot."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from tests.support.images import busybox_image as build_busybox_image
from tests.support.images import push_image, wait_until
from tests.support.registry import Registry
from tests.support.stack import Stack

from .conftest import Cri, leftovers

pytestmark = pytest.mark.integration

# A pause-like image: real executables, and a Cmd that only waits.
PAUSE_CMD = ["/bin/sleep", "86400"]


@pytest.fixture(scope="module")
def pause_ref(registry: Registry) -> str:
    pushed = push_image(registry, "crib-test/pause", "3.9", build_busybox_image(cmd=PAUSE_CMD))
    return pushed.reference


@pytest.fixture(scope="module")
def crib(pause_ref: str) -> Iterator[Stack]:
    """Overrides conftest's stack: this module's runtimed runs the pause image."""
    with Stack.running(CRIB_RUNTIMED__PAUSE_IMAGE=pause_ref) as stack:
        yield stack


def _info(cri: Cri, sid: str) -> dict[str, object]:
    resp = cri.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
        pod_sandbox_id=sid, verbose=True), timeout=10)
    return json.loads(resp.info["info"])  # type: ignore[no-any-return]


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def _ns(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def test_pause_image_holds_the_pod(crib: Stack, cri: Cri, image: str, pause_ref: str) -> None:
    # Not pulled by anyone: the first RunPodSandbox pulls it through imaged.
    listed = cri.img.ListImages(api_pb2.ListImagesRequest(), timeout=10).images
    assert not any(pause_ref in i.repo_tags for i in listed)
    sec = api_pb2.LinuxSandboxSecurityContext(
        namespace_options=api_pb2.NamespaceOption(pid=api_pb2.POD))
    sid, pod = cri.run_pod(cri.pod_config(linux=api_pb2.LinuxPodSandboxConfig(
        security_context=sec)))
    listed = cri.img.ListImages(api_pb2.ListImagesRequest(), timeout=10).images
    assert any(pause_ref in i.repo_tags for i in listed)

    pid = int(_info(cri, sid)["pid"])  # type: ignore[arg-type]
    assert pid > 0 and _cmdline(pid) == PAUSE_CMD
    assert f"infra-{sid}" in leftovers(crib).get("snapshots", [])

    # A container of the pod shares the pause container's network, IPC, UTS and (the pod
    # asked for it) PID namespaces; in its PID namespace the pause process is PID 1.
    cid = cri.create(sid, pod, image, "app", command=["sleep", "300"],
                     linux=api_pb2.LinuxContainerConfig(
                         security_context=api_pb2.LinuxContainerSecurityContext(
                             namespace_options=api_pb2.NamespaceOption(pid=api_pb2.POD))))
    cri.start(cid)
    cinfo = json.loads(cri.rt.ContainerStatus(api_pb2.ContainerStatusRequest(
        container_id=cid, verbose=True), timeout=10).info["info"])
    cpid = int(cinfo["pid"])
    for kind in ("net", "ipc", "uts", "pid"):
        assert _ns(cpid, kind) == _ns(pid, kind), kind
    assert _ns(pid, "pid") != _ns(os.getpid(), "pid")
    out = cri.rt.ExecSync(api_pb2.ExecSyncRequest(
        container_id=cid, cmd=["cat", "/proc/1/cmdline"], timeout=10), timeout=20)
    assert out.stdout.split(b"\0")[:-1] == [c.encode() for c in PAUSE_CMD]

    # StopPodSandbox kills it; the pod is NotReady.
    cri.rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=10)
    st = cri.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid),
                                 timeout=10).status
    assert st.state == api_pb2.SANDBOX_NOTREADY
    assert f"infra-{sid}" in leftovers(crib).get("snapshots", [])

    # RemovePodSandbox removes it and its snapshot: nothing left.
    cri.rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    assert leftovers(crib) == {}


def test_pause_image_without_shared_pid(crib: Stack, cri: Cri, image: str) -> None:
    """The kubelet's default (pid=CONTAINER) still gets the infra container: it holds the
    network namespace; the pod's containers keep their own PID namespaces."""
    sec = api_pb2.LinuxSandboxSecurityContext(
        namespace_options=api_pb2.NamespaceOption(pid=api_pb2.CONTAINER))
    sid, pod = cri.run_pod(cri.pod_config(linux=api_pb2.LinuxPodSandboxConfig(
        security_context=sec)))
    pid = int(_info(cri, sid)["pid"])  # type: ignore[arg-type]
    assert pid > 0 and _cmdline(pid) == PAUSE_CMD
    cid = cri.create(sid, pod, image, "app", command=["sleep", "300"],
                     linux=api_pb2.LinuxContainerConfig(
                         security_context=api_pb2.LinuxContainerSecurityContext(
                             namespace_options=api_pb2.NamespaceOption(
                                 pid=api_pb2.CONTAINER))))
    cri.start(cid)
    cpid = int(json.loads(cri.rt.ContainerStatus(api_pb2.ContainerStatusRequest(
        container_id=cid, verbose=True), timeout=10).info["info"])["pid"])
    assert _ns(cpid, "net") == _ns(pid, "net")
    assert _ns(cpid, "pid") != _ns(pid, "pid")
    # The pause container's death marks the pod NotReady (it held the namespaces).
    os.kill(pid, 9)
    assert wait_until(lambda: cri.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
        pod_sandbox_id=sid), timeout=10).status.state == api_pb2.SANDBOX_NOTREADY, timeout=10)
    cri.remove_pod(sid)
    assert leftovers(crib) == {}


def test_pause_pod_survives_runtimed_restart(crib: Stack, cri: Cri) -> None:
    """kill -9 of runtimed leaves the pause container running (conmon holds it); after
    recovery the pod is Ready and its removal still cleans up snapshot and all."""
    sid, _pod = cri.run_pod()
    pid = int(_info(cri, sid)["pid"])  # type: ignore[arg-type]
    crib.kill("runtimed")
    crib.start_one("runtimed")
    assert Path(f"/proc/{pid}").exists()
    st = cri.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid),
                                 timeout=10).status
    assert st.state == api_pb2.SANDBOX_READY
    assert int(_info(cri, sid)["pid"]) == pid  # type: ignore[arg-type]
    cri.remove_pod(sid)
    assert not Path(f"/proc/{pid}").exists()
    assert leftovers(crib) == {}


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_pause_image_in_a_pod_user_namespace(crib: Stack, cri: Cri, image: str,
                                             handler: str) -> None:
    """The pause container joins the pod's user namespace, its rootfs ID-mapped as any
    container's; the pod's containers share its PID namespace, all in that one."""
    mapping = [api_pb2.IDMapping(host_id=65536 * 70, container_id=0, length=65536)]
    ns = api_pb2.NamespaceOption(pid=api_pb2.POD, userns_options=api_pb2.UserNamespace(
        mode=api_pb2.POD, uids=mapping, gids=mapping))
    config = cri.pod_config(linux=api_pb2.LinuxPodSandboxConfig(
        security_context=api_pb2.LinuxSandboxSecurityContext(namespace_options=ns)))
    sid, _ = cri.run_pod(config, handler=handler)
    try:
        pid = int(_info(cri, sid)["pid"])  # type: ignore[call-overload]
        assert _cmdline(pid) == PAUSE_CMD
        assert Path(f"/proc/{pid}/uid_map").read_text().split() == ["0", str(65536 * 70),
                                                                   "65536"]
        assert os.stat(f"/proc/{pid}/root/bin/busybox").st_uid == 65536 * 70
        linux = api_pb2.LinuxContainerConfig(
            security_context=api_pb2.LinuxContainerSecurityContext(namespace_options=ns))
        cid = cri.create(sid, config, image, "c", command=["sleep", "60"], linux=linux)
        cri.start(cid)
        ctr = json.loads(cri.rt.ContainerStatus(api_pb2.ContainerStatusRequest(
            container_id=cid, verbose=True), timeout=10).info["info"])["pid"]
        for kind in ("user", "pid", "net", "ipc", "uts"):
            assert _ns(ctr, kind) == _ns(pid, kind), kind
    finally:
        cri.remove_pod(sid)
    left = leftovers(crib)
    assert not left.get("mounts") and not left.get("ns_pins"), left
