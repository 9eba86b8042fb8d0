"""Pod and container lifecycle through the gateway with the grpcio client, on runc and
crun, with the busybox test image: logs, exit codes, stop and remove."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from .conftest import Cri

pytestmark = pytest.mark.integration

LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{1,9}(Z|[+-]\d\d:\d\d) (stdout|stderr) (P|F) (.*)$")


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_full_lifecycle(cri: Cri, image: str, handler: str) -> None:
    sid, pod = cri.run_pod(handler=handler)
    st = cri.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid,
                                                                 verbose=True)).status
    assert st.state == api_pb2.SANDBOX_READY
    assert st.network.ip.startswith("10.213.")
    assert st.runtime_handler == handler
    cid = cri.create(sid, pod, image, "talker", command=["sh", "-c"], args=[
        "echo one; echo two >&2; printf 'no-newline'; sleep 0.3; echo; "
        "hostname; echo env=$GREETING; exit 7"],
        envs=[api_pb2.KeyValue(key="GREETING", value="hello there")])
    assert cri.status(cid).state == api_pb2.CONTAINER_CREATED
    cri.start(cid)
    st = cri.wait_exit(cid)
    assert st.state == api_pb2.CONTAINER_EXITED
    assert st.exit_code == 7
    assert st.reason == "Error"
    assert st.started_at > 0 and st.finished_at >= st.started_at
    assert st.log_path == os.path.join(pod.log_directory, "talker.log")
    lines = Path(st.log_path).read_text().splitlines()
    parsed = [LOG_LINE.match(line) for line in lines]
    assert all(parsed), lines
    streams = [(m.group(2), m.group(3), m.group(4)) for m in parsed if m]
    assert ("stdout", "F", "one") in streams
    assert ("stderr", "F", "two") in streams
    # A line cut short is tagged P, and its end arrives as an F line.
    assert ("stdout", "P", "no-newline") in streams
    assert ("stdout", "F", pod.metadata.name) in streams
    assert ("stdout", "F", "env=hello there") in streams
    # The exited container's runtime state (and cgroup) is released without waiting for
    # RemoveContainer, as containerd does on a task exit; our record keeps the exit.
    binary = {"runc": "/usr/sbin/runc", "crun": "/usr/bin/crun"}[handler]
    runtime_root = cri.stack.root / "run/runtimed/rt" / handler
    deadline = time.monotonic() + 10
    while subprocess.run([binary, f"--root={runtime_root}", "state", cid],
                         capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, f"{handler} still holds exited {cid}"
        time.sleep(0.05)
    st = cri.status(cid)
    assert (st.state, st.exit_code, st.reason) == (api_pb2.CONTAINER_EXITED, 7, "Error")
    # Stop and remove are idempotent.
    cri.rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=1))
    cri.rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    cri.rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    with pytest.raises(grpc.RpcError) as err:
        cri.status(cid)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    cri.remove_pod(sid)
    cri.remove_pod(sid)
    listed = cri.rt.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    assert sid not in [p.id for p in listed]


def test_running_container_stop_and_exec(cri: Cri, image: str) -> None:
    sid, pod = cri.run_pod()
    try:
        cid = cri.create(sid, pod, image, "trapper", command=["sh", "-c"], args=[
            "trap 'echo got-term; exit 0' TERM; sleep 300 & wait"])
        ignorer = cri.create(sid, pod, image, "ignorer", command=["sh", "-c"],
                             args=["trap '' TERM; while true; do sleep 1; done"])
        cri.start(cid)
        cri.start(ignorer)
        assert cri.status(cid).state == api_pb2.CONTAINER_RUNNING
        r = cri.rt.ExecSync(api_pb2.ExecSyncRequest(
            container_id=cid, cmd=["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10))
        assert (r.stdout, r.stderr, r.exit_code) == (b"out\n", b"err\n", 3)
        with pytest.raises(grpc.RpcError) as err:
            cri.rt.ExecSync(api_pb2.ExecSyncRequest(container_id=cid, cmd=["sleep", "30"],
                                                    timeout=1))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        t0 = time.monotonic()
        cri.rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=10))
        assert time.monotonic() - t0 < 5  # the trap handles SIGTERM at once
        st = cri.status(cid)
        assert (st.state, st.exit_code, st.reason) == (api_pb2.CONTAINER_EXITED, 0, "Completed")
        assert "got-term" in Path(st.log_path).read_text()
        # A container ignoring SIGTERM is killed after the timeout.
        t0 = time.monotonic()
        cri.rt.StopContainer(api_pb2.StopContainerRequest(container_id=ignorer, timeout=2))
        assert 1.9 < time.monotonic() - t0 < 8
        st = cri.status(ignorer)
        assert (st.state, st.exit_code) == (api_pb2.CONTAINER_EXITED, 137)
        # Stopping again is fine.
        cri.rt.StopContainer(api_pb2.StopContainerRequest(container_id=ignorer, timeout=2))
    finally:
        cri.remove_pod(sid)


def test_status_and_exec_output_cap(cri: Cri, image: str) -> None:
    conds = {c.type: c.status for c in cri.rt.Status(api_pb2.StatusRequest()).status.conditions}
    assert conds.get("RuntimeReady") is True
    sid, pod = cri.run_pod()
    try:
        cid = cri.create(sid, pod, image, "big", command=["sleep", "300"])
        cri.start(cid)
        r = cri.rt.ExecSync(api_pb2.ExecSyncRequest(
            container_id=cid, cmd=["sh", "-c", "head -c 20000000 /dev/zero; echo done >&2"],
            timeout=30), timeout=60)
        assert 16 * 1024 * 1024 - 2048 < len(r.stdout) < 16 * 1024 * 1024
        assert r.stderr == b"done\n" and r.exit_code == 0
    finally:
        cri.remove_pod(sid)


def test_create_past_the_deadline_is_parked_for_the_retry(cri: Cri, image: str) -> None:
    config = cri.pod_config()
    with pytest.raises(grpc.RpcError) as err:
        cri.rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=0.02)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The kubelet's retry gets the sandbox the first call went on to make, not a twin.
    sid = cri.rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config),
                               timeout=60).pod_sandbox_id
    mine = [p.id for p in cri.rt.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
            if p.metadata.uid == config.metadata.uid]
    assert mine == [sid]
    try:
        cfg = api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name="slowpoke"),
                                      image=api_pb2.ImageSpec(image=image),
                                      command=["sleep", "300"], log_path="s.log")
        req = api_pb2.CreateContainerRequest(pod_sandbox_id=sid, config=cfg,
                                             sandbox_config=config)
        with pytest.raises(grpc.RpcError) as err:
            cri.rt.CreateContainer(req, timeout=0.02)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        cid = cri.rt.CreateContainer(req, timeout=60).container_id
        assert cri.stack.log("runtimed").count("collecting parked create") >= 1
        listed = cri.rt.ListContainers(api_pb2.ListContainersRequest(
            filter=api_pb2.ContainerFilter(pod_sandbox_id=sid))).containers
        assert [c.id for c in listed] == [cid]
        # Collected once: a third create of the same name is a real duplicate.
        with pytest.raises(grpc.RpcError) as err:
            cri.rt.CreateContainer(req, timeout=60)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    finally:
        cri.remove_pod(sid)
