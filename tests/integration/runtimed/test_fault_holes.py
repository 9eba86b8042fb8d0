"""Regression tests for the holes a fault-injection and hostile-input run found (issue
11): each failed on the code before its fix."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from crib_common.cri.runtime.v1 import ContainerStatusRequest, ContainerStatusResponse

from .conftest import Cri, code_of, leftovers

pytestmark = pytest.mark.integration


def _refused(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    return err.value


def test_relative_or_unclean_host_path_is_refused(cri: Cri, image: str) -> None:
    sid, pod = cri.run_pod()
    try:
        for bad in ("../../../../../etc", "etc", "/tmp/../etc", "/tmp/./x"):
            err = _refused(lambda: cri.create(
                sid, pod, image, "escape", command=["true"],
                mounts=[api_pb2.Mount(container_path="/host", host_path=bad)]))
            assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT, bad
            assert "mounts[0].host_path" in err.details() and bad in err.details()
        # Nothing was made for the refused creates.
        listed = cri.rt.ListContainers(api_pb2.ListContainersRequest(
            filter=api_pb2.ContainerFilter(pod_sandbox_id=sid))).containers
        assert listed == []
    finally:
        cri.remove_pod(sid)


def test_sysctls_must_be_namespaced(cri: Cri, image: str) -> None:
    for key in ("kernel.panic", "vm.swappiness", "no.such.sysctl"):
        config = cri.pod_config(linux=api_pb2.LinuxPodSandboxConfig(sysctls={key: "1"}))
        err = _refused(lambda: cri.run_pod(config))
        assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT, key
        assert key in err.details()
        assert "warning" not in err.details().lower()
    # A namespaced one still works, in the pod's own namespaces.
    config = cri.pod_config(linux=api_pb2.LinuxPodSandboxConfig(
        sysctls={"net.ipv4.ip_unprivileged_port_start": "80", "kernel.shm_rmid_forced": "1"}))
    sid, _ = cri.run_pod(config)
    cri.remove_pod(sid)


def test_run_as_group_alone_is_refused(cri: Cri, image: str) -> None:
    sid, pod = cri.run_pod()
    try:
        err = _refused(lambda: cri.create(
            sid, pod, image, "group-only", command=["true"],
            linux=api_pb2.LinuxContainerConfig(security_context=api_pb2.
                                               LinuxContainerSecurityContext(
                                                   run_as_group=api_pb2.Int64Value(value=5)))))
        assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT
        assert "run_as_group" in err.details()
        # With a user it is fine.
        cri.create(sid, pod, image, "user-and-group", command=["true"],
                   linux=api_pb2.LinuxContainerConfig(
                       security_context=api_pb2.LinuxContainerSecurityContext(
                           run_as_user=api_pb2.Int64Value(value=1000),
                           run_as_group=api_pb2.Int64Value(value=5))))
    finally:
        cri.remove_pod(sid)


def test_image_volume_readonly_and_reported_by_digest(cri: Cri, image: str) -> None:
    ref = cri.img.ImageStatus(api_pb2.ImageStatusRequest(
        image=api_pb2.ImageSpec(image=image))).image.id
    sid, pod = cri.run_pod()
    try:
        err = _refused(lambda: cri.create(
            sid, pod, image, "rw-volume", command=["true"],
            mounts=[api_pb2.Mount(container_path="/vol", image=api_pb2.ImageSpec(image=image),
                                  readonly=False)]))
        assert code_of(err) == grpc.StatusCode.INVALID_ARGUMENT
        assert "mounts[0].readonly" in err.details()
        cid = cri.create(sid, pod, image, "ro-volume", command=["true"], mounts=[
            api_pb2.Mount(container_path="/vol", image=api_pb2.ImageSpec(image=image),
                          readonly=True)])
        # The PyPI stubs predate ImageSpec.image_ref: read the answer with our own types.
        call = cri.channel.unary_unary("/runtime.v1.RuntimeService/ContainerStatus")
        raw = call(bytes(ContainerStatusRequest(container_id=cid)), timeout=10)
        status = ContainerStatusResponse().parse(raw).status
        (mount,) = [m for m in status.mounts if m.container_path == "/vol"]
        assert mount.image.image == image
        assert mount.image.image_ref == ref and ref.startswith("sha256:")
    finally:
        cri.remove_pod(sid)


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_sandbox_teardown_leaves_no_socket_link(cri: Cri, image: str, handler: str) -> None:
    config = cri.pod_config(linux=api_pb2.LinuxPodSandboxConfig(
        security_context=api_pb2.LinuxSandboxSecurityContext(
            namespace_options=api_pb2.NamespaceOption(pid=api_pb2.POD))))
    # A shared PID namespace: catatonit under conmon (and RuntimeDefault seccomp).
    sid, pod = cri.run_pod(config, handler=handler)
    cid = cri.create(sid, pod, image, "ps", command=["sh", "-c", "echo $$; sleep 300"])
    cri.start(cid)
    assert cri.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
        pod_sandbox_id=sid)).status.state == api_pb2.SANDBOX_READY
    log = Path(cri.status(cid).log_path)
    deadline = time.monotonic() + 10
    while not (log.exists() and log.read_text().strip()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # catatonit holds PID 1 of the pod's namespace: the container's shell is not PID 1.
    assert log.read_text().split()[-1] != "1"
    links = Path(cri.stack.root) / "run/runtimed/s"
    assert (links / sid).is_symlink()
    cri.remove_pod(sid)
    assert not (links / sid).is_symlink()
    # The sweep collects a link nobody names (as the 796 the fault run left).
    stray = links / uuid.uuid4().hex.ljust(64, "0")
    stray.symlink_to("/nonexistent")
    out = subprocess.run([str(Path(sys.executable).parent / "crib"), "sweep"],
                         env=cri.stack.env(), capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not stray.is_symlink()


def _conmon_pid(cri: Cri, cid: str) -> int:
    bundle = Path(cri.stack.root) / "run/runtimed/c" / cid
    return int((bundle / "conmon.pid").read_text())


def test_lost_monitor_is_noticed(cri: Cri, image: str) -> None:
    sid, pod = cri.run_pod()
    try:
        lone = cri.create(sid, pod, image, "lone", command=["sleep", "300"])
        stoppable = cri.create(sid, pod, image, "stoppable", command=["sh", "-c"],
                               args=["trap '' TERM; while true; do sleep 1; done"])
        for cid in (lone, stoppable):
            cri.start(cid)
            os.kill(_conmon_pid(cri, cid), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while "no longer logged" not in cri.status(lone).message:
            assert time.monotonic() < deadline, "the lost monitor was not noticed"
            time.sleep(0.1)
        assert cri.status(lone).state == api_pb2.CONTAINER_RUNNING
        # Its process ending is recorded, without a monitor to write the exit file.
        os.kill(_verbose_pid(cri, lone), signal.SIGKILL)
        st = cri.wait_exit(lone)
        assert (st.state, st.exit_code, st.reason) == (api_pb2.CONTAINER_EXITED, 255,
                                                        "MonitorLost")
        # StopContainer still works on a container whose monitor is gone.
        cri.rt.StopContainer(api_pb2.StopContainerRequest(container_id=stoppable, timeout=1),
                             timeout=30)
        st = cri.status(stoppable)
        assert (st.state, st.reason) == (api_pb2.CONTAINER_EXITED, "MonitorLost")
    finally:
        cri.remove_pod(sid)


def _verbose_pid(cri: Cri, cid: str) -> int:
    import json

    info = cri.rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid,
                                                                 verbose=True)).info
    return int(json.loads(info["info"])["pid"])


def _with_marker(marker: str) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if marker.encode() in (p / "cmdline").read_bytes():
                    found.append(int(p.name))
            except OSError:
                continue
    return found


def test_exec_sync_timeout_kills_what_it_started(cri: Cri, image: str) -> None:
    sid, pod = cri.run_pod()
    try:
        cid = cri.create(sid, pod, image, "probe-target", command=["sleep", "300"])
        cri.start(cid)
        marker = "crib-exec-" + uuid.uuid4().hex[:8]
        err = _refused(lambda: cri.rt.ExecSync(api_pb2.ExecSyncRequest(
            container_id=cid, cmd=["sh", "-c", f"sleep 300 & sleep 301; : {marker}"],
            timeout=1), timeout=30))
        assert code_of(err) == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 5
        while _with_marker(marker):
            assert time.monotonic() < deadline, "exec'd processes outlived the timeout"
            time.sleep(0.1)
        assert cri.status(cid).state == api_pb2.CONTAINER_RUNNING
    finally:
        cri.remove_pod(sid)
    assert not leftovers(cri.stack).get("run_files")
