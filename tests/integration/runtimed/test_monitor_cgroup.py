"""Issue 17 on the real thing (runc and crun, conmon): runtimed runs in a cgroup of its own,
as under a container engine or a systemd unit, and each conmon in one of its own.

- Every process in runtimed's cgroup is SIGKILLed, as an engine does when it stops
  runtimed's container: the containers and their monitors keep running, and the restarted
  runtimed still manages them (status, exec, stop with the exit code recorded, removal),
  leaving no cgroup behind.
- A pod whose pinned IPC namespace was unmounted behind runtimed's back is NOTREADY after
  a restart, and CreateContainer into it is FailedPrecondition saying why.
- runtimed refuses to start (exit 2) when its directories sit on a private mount, naming
  the path and the commands that fix it.
"""

from __future__ import annotations

import json
import os
import subprocess

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2

from tests.support.stack import BIN, Stack

from .conftest import Cri, leftovers, started

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def own(busybox_image: str) -> Iterator[tuple[Cri, Stack, str]]:
    stack = Stack.create(launcher="process")
    stack.own_cgroups.add("runtimed")
    with started(stack, busybox_image) as client:
        yield client, stack, busybox_image


def _cgroups_of(pid: int) -> dict[str, str]:
    """/proc/<pid>/cgroup as {hierarchy: path} ("" for the v2 tree)."""
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _id, ctrls, path = line.split(":", 2)
        out[ctrls] = path
    return out


def _conmon_of(cid: str) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"conmon") and cid.encode() in argv:
                return int(entry.name)
    raise AssertionError(f"no conmon for {cid}")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("handler", ["runc", "crun"])
def test_containers_survive_a_kill_of_runtimeds_cgroup(own: tuple[Cri, Stack, str],
                                                       handler: str) -> None:
    cri, stack, image = own
    runtimed = stack.procs["runtimed"].pid
    daemon_cg = stack.daemon_cgroup("runtimed")
    assert _cgroups_of(runtimed)["pids"] == daemon_cg
    # A shared PID namespace: the pod's init (catatonit) runs under a monitor too.
    config = cri.pod_config(linux=api_pb2.LinuxPodSandboxConfig(
        security_context=api_pb2.LinuxSandboxSecurityContext(
            namespace_options=api_pb2.NamespaceOption(pid=api_pb2.POD))))
    sid, pod = cri.run_pod(config, handler=handler)
    cid = cri.create(sid, pod, image, "survivor", command=["sh", "-c"],
                     args=["trap 'exit 7' TERM; echo up; while :; do sleep 0.1; done"])
    cri.start(cid)
    pid = int(json.loads(cri.rt.ContainerStatus(api_pb2.ContainerStatusRequest(
        container_id=cid, verbose=True), timeout=10).info["info"])["pid"])
    monitors = {"container": _conmon_of(cid), "infra": _conmon_of(sid)}
    for what, mon in monitors.items():
        cgs = _cgroups_of(mon)
        # In every hierarchy (controllers, name=systemd, the hybrid cgroup2) the monitor
        # is in a crib-conmon-<id> cgroup of its own, none of them runtimed's.
        oid = cid if what == "container" else sid
        assert all(path.endswith(f"/crib-conmon-{oid}") for path in cgs.values()), cgs
        assert daemon_cg not in cgs.values()

    killed = stack.kill_cgroup("runtimed")
    assert runtimed in killed
    assert not killed & {pid, *monitors.values()}
    time.sleep(0.5)
    assert _alive(pid) and all(_alive(m) for m in monitors.values())

    stack.start_one("runtimed")
    cri.reconnect()
    st = cri.status(cid)
    assert st.state == api_pb2.CONTAINER_RUNNING
    assert cri.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
        pod_sandbox_id=sid), timeout=10).status.state == api_pb2.SANDBOX_READY
    r = cri.rt.ExecSync(api_pb2.ExecSyncRequest(container_id=cid, cmd=["echo", "still here"],
                                                timeout=10), timeout=20)
    assert (r.exit_code, r.stdout) == (0, b"still here\n")
    cri.rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=10),
                         timeout=30)
    st = cri.status(cid)
    assert (st.state, st.exit_code) == (api_pb2.CONTAINER_EXITED, 7)
    assert not _alive(pid)
    assert "up" in Path(st.log_path).read_text()
    cri.rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), timeout=30)
    cri.remove_pod(sid)
    left = {k: v for k, v in leftovers(stack).items() if v}
    assert left == {}, left


def test_lost_ipc_pin_makes_the_pod_notready(own: tuple[Cri, Stack, str]) -> None:
    cri, stack, image = own
    sid, pod = cri.run_pod()
    pin = stack.root / "run/ns" / sid / "ipc"
    assert os.stat(pin).st_dev != os.stat(pin.parent).st_dev  # a mounted namespace
    stack.kill("runtimed")
    subprocess.run(["umount", str(pin)], check=True)
    stack.start_one("runtimed")
    cri.reconnect()
    assert cri.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
        pod_sandbox_id=sid), timeout=10).status.state == api_pb2.SANDBOX_NOTREADY
    listed = {p.id: p.state for p in cri.rt.ListPodSandbox(
        api_pb2.ListPodSandboxRequest(), timeout=10).items}
    assert listed[sid] == api_pb2.SANDBOX_NOTREADY
    with pytest.raises(grpc.RpcError) as err:
        cri.create(sid, pod, image, "late", command=["true"])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "pinned namespaces are gone" in (err.value.details() or "")
    cri.remove_pod(sid)
    left = {k: v for k, v in leftovers(stack).items() if v}
    assert left == {}, left


def test_refuses_to_start_on_a_private_mount() -> None:
    base = Path(tempfile.mkdtemp(prefix="crib-priv-", dir="/tmp"))
    # Private whatever / is here (shared on systemd hosts): a bind of its own.
    subprocess.run(["mount", "--bind", str(base), str(base)], check=True)
    subprocess.run(["mount", "--make-private", str(base)], check=True)
    try:
        env = dict(os.environ, CRIB_CONFIG=str(base / "none.toml"),
                   CRIB_RUNTIMED__SOCKET=str(base / "r.sock"),
                   CRIB_RUNTIMED__ROOT=str(base / "lib"), CRIB_RUNTIMED__RUN_DIR=str(base / "run"),
                   CRIB_RUNTIMED__PINNS_DIR=str(base / "ns"),
                   CRIB_RUNTIMED__POD_LOG_DIR=str(base / "logs"))
        res = subprocess.run([str(BIN / "crib-runtimed")], env=env, capture_output=True,
                             timeout=60, stdin=subprocess.DEVNULL)
        err = res.stderr.decode()
        assert res.returncode == 2, err
        run = base / "run"
        assert f"runtimed.run_dir {run} is on mount {base}, which is private" in err
        assert f"mount --bind {run} {run} && mount --make-rshared {run}" in err
        assert not (base / "r.sock").exists()
    finally:
        subprocess.run(["umount", str(base)], check=False)
        subprocess.run(["rm", "-rf", str(base)], check=False)


