"""deploy/docker-compose.yml brought up for real under podman + podman-compose 1.6 (issue 17).

The stack is built from deploy/Dockerfile on a Debian 12 base made here with mmdebstrap
(no base image can be pulled on these machines), started with `podman-compose up`, and
driven through its CRI socket by the independent grpcio client: pull from the local test
registry, a pod with a container, exec, its log, a ping to the pod's IP. Then runtimed's
container is killed as an engine kills it (every process in its cgroup) and started again:
the containers must have kept running, with their monitors, and still be managed. At the
end nothing of the stack is left on the host. Select it with `-m compose`.

Prints two figures: `up` to a CRI socket that answers, and runtimed's container killed to
runtimed answering again, with 10 pods running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from cri_api.v1 import api_pb2, api_pb2_grpc

from tests.support import podman as podman_support
from tests.support.podman import ComposeStack, Unusable

pytestmark = [pytest.mark.integration, pytest.mark.compose]

T = TypeVar("T")
PODS = 10


@pytest.fixture(scope="module")
def compose() -> Iterator[ComposeStack]:
    try:
        tools = podman_support.ensure_podman()
    except Unusable as exc:
        pytest.skip(f"podman cannot run here: {exc}")
    stack = ComposeStack(Path(tempfile.mkdtemp(prefix="crib-cmp-", dir="/tmp")), tools)
    timings = stack.timings
    try:
        stack.write_config()
        try:
            stack.check_usable()
        except Unusable as exc:
            pytest.skip(f"podman cannot run here: {exc}")
        t0 = time.monotonic()
        stack.base_image()
        timings["base image (mmdebstrap or cache, import)"] = time.monotonic() - t0
        t0 = time.monotonic()
        stack.build()
        timings["image build"] = time.monotonic() - t0
        stack.share_mounts()
        yield stack
    finally:
        left = stack.teardown()
    # Reported as an error of the last test: the host must be as it was.
    assert not left, f"the compose stack left on the host: {left}"


def _channel(path: Path) -> grpc.Channel:
    return grpc.insecure_channel(f"unix://{path}")


def _until(what: str, call: Callable[[], T], timeout: float) -> T:
    """`call()` until it stops raising grpc.RpcError or OSError; its result."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except (grpc.RpcError, OSError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not within {timeout}s: {exc}") from exc
            time.sleep(0.05)


def _conmons() -> dict[str, int]:
    """Container id -> pid of every conmon on the host (`conmon ... -c <id> ...`)."""
    found: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"conmon") and b"-c" in argv:
                found[argv[argv.index(b"-c") + 1].decode()] = int(proc.name)
    return found


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def ping(ip: str, timeout: float = 5.0) -> float:
    """One ICMP echo to `ip` from the host (no ping binary on these machines); seconds."""
    ident, payload = os.getpid() & 0xFFFF, b"crib-compose"
    header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    packet = struct.pack("!BBHHH", 8, 0, _icmp_checksum(header + payload), ident, 1) + payload
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.settimeout(timeout)
        start = time.monotonic()
        s.sendto(packet, (ip, 0))
        while True:
            data, (src, _) = s.recvfrom(2048)
            ihl = (data[0] & 0x0F) * 4
            kind, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if src == ip and kind == 0 and rid == ident:
                return time.monotonic() - start


class Client:
    """The grpcio CRI client on the compose stack's socket."""

    def __init__(self, stack: ComposeStack) -> None:
        self.stack = stack
        self.channel = _channel(stack.cri_socket)
        self.rt = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.img = api_pb2_grpc.ImageServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def run_pod(self, image: str, name: str) -> tuple[str, str, Path]:
        """A pod with one container printing a line then sleeping: (pod, container, log)."""
        uid = uuid.uuid4().hex[:12]
        # The kubelet's layout: /var/log/pods/<namespace>_<name>_<uid>/<container>/0.log,
        # a path inside the stack; the host sees it under CRIB_HOST_ROOT.
        log_dir = f"/var/log/pods/crib-compose_{name}_{uid}"
        pod = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, uid=uid, namespace="crib-compose"),
            hostname=name, log_directory=log_dir)
        sid = self.rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=pod),
                                    timeout=60).pod_sandbox_id
        cfg = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="main"),
            image=api_pb2.ImageSpec(image=image), command=["sh", "-c"],
            args=[f"echo hello from {name}; exec sleep 3600"], log_path="main/0.log")
        cid = self.rt.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=sid, config=cfg, sandbox_config=pod), timeout=60).container_id
        self.rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=30)
        host_log = Path(str(self.stack.host) + log_dir) / "main/0.log"
        return sid, cid, host_log

    def status(self, cid: str) -> Any:
        return self.rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid),
                                       timeout=10).status

    def exec(self, cid: str, cmd: list[str]) -> Any:
        return self.rt.ExecSync(api_pb2.ExecSyncRequest(container_id=cid, cmd=cmd,
                                                        timeout=10), timeout=20)

    def remove_all_pods(self) -> None:
        for pod in self.rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items:
            self.rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id),
                                   timeout=60)
            self.rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id),
                                     timeout=60)


def _assert_new_runtimed(stack: ComposeStack, old_pid: int, cri: Client) -> None:
    """Raises OSError until runtimed runs again under another pid and answers."""
    state = stack.podman("inspect", "-f", "{{.State.Pid}}", stack.container("runtimed"),
                         check=False).stdout.strip()
    if state in ("", "0", str(old_pid)):
        raise OSError(f"runtimed's container not restarted yet (pid {state or '?'})")
    cri.rt.ListContainers(api_pb2.ListContainersRequest(), timeout=2)


def _log_has(path: Path, text: str, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if any(line.endswith(text) for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_compose_stack_under_podman(compose: ComposeStack, busybox_image: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    stack = compose
    timings = stack.timings
    # podman's package put nothing new into netd's CNI directory.
    assert stack.tools.cni_after == stack.tools.cni_before

    t0 = time.monotonic()
    stack.up()
    cri = Client(stack)
    try:
        try:
            version = _until("the CRI socket", lambda: cri.rt.Version(
                api_pb2.VersionRequest(), timeout=2), 60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{stack.logs()}") from exc
        timings["up -> CRI socket answers"] = time.monotonic() - t0
        assert version.runtime_name == "crib"
        _until("runtimed ready", lambda: cri.rt.ListContainers(
            api_pb2.ListContainersRequest(), timeout=2), 60)
        timings["up -> runtimed ready"] = time.monotonic() - t0

        cri.img.PullImage(api_pb2.PullImageRequest(
            image=api_pb2.ImageSpec(image=busybox_image)), timeout=120)
        first_pod, first, first_log = cri.run_pod(busybox_image, "web")
        assert cri.status(first).state == api_pb2.CONTAINER_RUNNING
        result = cri.exec(first, ["sh", "-c", "echo exec $((6 * 7))"])
        assert (result.exit_code, result.stdout) == (0, b"exec 42\n")
        # The log conmon wrote inside runtimed's container, read from the host's side.
        lines = _log_has(first_log, "hello from web")
        assert any(line.endswith(" stdout F hello from web") for line in lines), lines
        pod_ip = cri.rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(
            pod_sandbox_id=first_pod), timeout=10).status.network.ip
        assert pod_ip.startswith(podman_support.SUBNET.rsplit(".", 1)[0] + ".")
        ping(pod_ip)

        containers = [first]
        for n in range(1, PODS):
            containers.append(cri.run_pod(busybox_image, f"pod{n}")[1])
        started = {c: cri.status(c).started_at for c in containers}
        monitors = _conmons()
        assert set(containers) <= set(monitors), "a conmon per container"

        # As an engine stops a container: SIGKILL, then every process left in its cgroup.
        t0 = time.monotonic()
        stack.podman("kill", stack.container("runtimed"))
        stack.podman("wait", stack.container("runtimed"), timeout=60)
        stack.podman("start", stack.container("runtimed"))
        _until("runtimed ready after its container was killed", lambda: cri.rt.ListContainers(
            api_pb2.ListContainersRequest(), timeout=2), 120)
        timings[f"runtimed container killed -> ready again ({PODS} pods)"] = \
            time.monotonic() - t0

        alive = _conmons()
        lost = [c for c in containers if alive.get(c) != monitors[c]]
        assert not lost, f"conmon of {len(lost)} of {PODS} containers did not survive"
        for cid in containers:
            st = cri.status(cid)
            assert (st.state, st.started_at) == (api_pb2.CONTAINER_RUNNING, started[cid]), \
                (cid, st.state, st.reason, st.message)
        result = cri.exec(first, ["sh", "-c", "echo still $((6 * 7))"])
        assert (result.exit_code, result.stdout) == (0, b"still 42\n")

        # A crash rather than an operator's kill: `restart: always` brings runtimed back
        # (podman without systemd: its cleanup process restarts the container).
        pid = int(stack.podman("inspect", "-f", "{{.State.Pid}}",
                               stack.container("runtimed")).stdout)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        _until("runtimed restarted by its restart policy", lambda: _assert_new_runtimed(
            stack, pid, cri), 120)
        timings[f"runtimed killed by a signal -> restarted and ready ({PODS} pods)"] = \
            time.monotonic() - t0
        alive = _conmons()
        assert all(alive.get(c) == monitors[c] for c in containers), "monitors lost"
        assert all(cri.status(c).state == api_pb2.CONTAINER_RUNNING for c in containers)
        assert sum("hello from web" in line for line in first_log.read_text().splitlines()) == 1
        ping(pod_ip)
        cri.rt.StopContainer(api_pb2.StopContainerRequest(container_id=first, timeout=10),
                             timeout=30)
        assert cri.status(first).state == api_pb2.CONTAINER_EXITED
        cri.rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=first), timeout=30)
        with pytest.raises(grpc.RpcError) as err:
            cri.status(first)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        cri.remove_all_pods()
        assert not cri.rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10).items
    finally:
        with contextlib.suppress(grpc.RpcError):
            cri.remove_all_pods()
        cri.close()
        t0 = time.monotonic()
        stack.down()
        timings["down"] = time.monotonic() - t0
        with capsys.disabled():
            print("\ncompose stack under podman:")
            for what, seconds in timings.items():
                print(f"  {what}: {seconds:.2f} s")
    assert not stack.podman("ps", "-a", "-q").stdout.split(), "containers left by down"


def test_compose_stack_left_nothing(compose: ComposeStack) -> None:
    """After the stack test: teardown runs at module end; here what `down` must already
    have undone (the mounts and pods the stack made), checked while podman still works."""
    mounts = [m for m in podman_support._mounts_under(compose.host)
              if m not in compose.shared]
    assert not mounts, mounts
    netns = compose.host / "run/netns"
    assert not (list(netns.iterdir()) if netns.is_dir() else [])
