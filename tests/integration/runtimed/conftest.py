"""A crib stack with the busybox test image pulled, and a small CRI helper over grpcio."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2, api_pb2_grpc

from tests.support.stack import Stack


@pytest.fixture(scope="module")
def crib() -> Iterator[Stack]:
    with Stack.running() as stack:
        yield stack


def _channel(stack: Stack) -> grpc.Channel:
    # The kubelet's 16 MiB message limits (its remote runtime client).
    limit = 16 * 1024 * 1024
    return grpc.insecure_channel(f"unix://{stack.cri_socket}", options=[
        ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)])


class EventWatch:
    """A GetContainerEvents stream read in a thread into `events`."""

    def __init__(self, rt: api_pb2_grpc.RuntimeServiceStub) -> None:
        self.events: list[api_pb2.ContainerEventResponse] = []
        self._stream = rt.GetContainerEvents(api_pb2.GetEventsRequest())
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()
        time.sleep(0.3)  # the stream is open before the caller acts

    def _collect(self) -> None:
        try:
            for ev in self._stream:
                self.events.append(ev)
        except grpc.RpcError:
            pass  # cancelled by stop()

    def stop(self) -> None:
        self._stream.cancel()
        self._reader.join(5)


class Cri:
    """The independent grpcio client against the gateway's socket."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.channel = _channel(stack)
        self.rt = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.img = api_pb2_grpc.ImageServiceStub(self.channel)
        self.logs = Path(stack.root) / "podlogs"

    def close(self) -> None:
        self.channel.close()

    def watch_events(self) -> EventWatch:
        """Start GetContainerEvents in a thread; `stop()` it before reading `events`."""
        return EventWatch(self.rt)

    def reconnect(self) -> None:
        self.channel.close()
        self.channel = _channel(self.stack)
        self.rt = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.img = api_pb2_grpc.ImageServiceStub(self.channel)

    def pod_config(self, name: str = "", **kw: Any) -> api_pb2.PodSandboxConfig:
        uid = uuid.uuid4().hex[:10]
        name = name or f"p-{uid}"
        logdir = self.logs / uid
        return api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, uid=uid, namespace="crib-test"),
            hostname=name, log_directory=str(logdir), **kw)

    def run_pod(self, config: api_pb2.PodSandboxConfig | None = None,
                handler: str = "") -> tuple[str, api_pb2.PodSandboxConfig]:
        config = config or self.pod_config()
        sid = self.rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(
            config=config, runtime_handler=handler), timeout=60).pod_sandbox_id
        return sid, config

    def create(self, sid: str, pod: api_pb2.PodSandboxConfig, image: str, name: str,
               command: list[str] | None = None, args: list[str] | None = None,
               **kw: Any) -> str:
        cfg = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name),
            image=api_pb2.ImageSpec(image=image), command=command or [], args=args or [],
            log_path=f"{name}.log", **kw)
        return self.rt.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=sid, config=cfg, sandbox_config=pod), timeout=60).container_id

    def start(self, cid: str) -> None:
        self.rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=30)

    def status(self, cid: str) -> api_pb2.ContainerStatus:
        return self.rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid),
                                       timeout=10).status

    def wait_exit(self, cid: str, timeout: float = 20) -> api_pb2.ContainerStatus:
        end = time.monotonic() + timeout
        while True:
            st = self.status(cid)
            if st.state == api_pb2.CONTAINER_EXITED or time.monotonic() > end:
                return st
            time.sleep(0.05)

    def remove_pod(self, sid: str) -> None:
        self.rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
        self.rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid),
                                 timeout=60)

    def remove_all_pods(self) -> None:
        """Stop and remove every pod the stack has (a test's cleanup)."""
        for pod in self.rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items:
            self.remove_pod(pod.id)


@pytest.fixture(scope="module")
def cri(crib: Stack) -> Iterator[Cri]:
    client = Cri(crib)
    try:
        yield client
    finally:
        # A failed test may leave pods: runtimed keeps containers running when it stops,
        # so remove them before the stack goes (with no failpoint armed).
        if crib.extra_env.pop("CRIB_RUNTIMED_CRASH_AT", None) is not None:
            proc = crib.procs.pop("runtimed", None)
            if proc is not None:
                proc.kill()
                proc.wait(timeout=30)
            crib.start_one("runtimed")
        try:
            client.remove_all_pods()
        except grpc.RpcError:
            pass
        client.close()
        shutil.rmtree(client.logs, ignore_errors=True)


def separate_processes() -> Iterator[Stack]:
    """A module's stack with each daemon as its own process, for modules that restart
    runtimed with a failpoint in its environment (crib-node forks every daemon with its
    own environment). Such a module overrides `crib` with it:
    `crib = pytest.fixture(scope="module", name="crib")(separate_processes)`."""
    with Stack.running(launcher="process") as stack:
        yield stack


@contextlib.contextmanager
def started(stack: Stack, image: str) -> Iterator[Cri]:
    """`stack` started, with a client that has pulled `image`; after, every pod removed
    and the stack cleaned up (for modules that build a stack of their own)."""
    client: Cri | None = None
    try:
        stack.start()
        client = Cri(stack)
        client.img.PullImage(api_pb2.PullImageRequest(
            image=api_pb2.ImageSpec(image=image)), timeout=120)
        yield client
    finally:
        if client is not None:
            with contextlib.suppress(grpc.RpcError):
                client.remove_all_pods()
            client.close()
        stack.cleanup()


@pytest.fixture(scope="module")
def image(cri: Cri, busybox_image: str) -> str:
    cri.img.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=busybox_image)),
                      timeout=120)
    return busybox_image


def code_of(exc: grpc.RpcError) -> grpc.StatusCode:
    return exc.code()  # type: ignore[no-any-return]


def unix_get_json(sock: Path, path: str) -> Any:
    """GET a daemon's REST path over its UNIX socket."""
    import http.client
    import json
    import socket as _socket

    class _Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = _socket.socket(_socket.AF_UNIX)
            self.sock.connect(str(sock))

    conn = _Conn("crib")
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return json.loads(resp.read() or b"null")
    finally:
        conn.close()


def leftovers(stack: Stack) -> dict[str, list[str]]:
    """What runtimed (and its peers, for pods) left on the host for this stack."""
    import sqlite3

    root = str(stack.root)
    out: dict[str, list[str]] = {}
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    # netd keeps its netns directory itself a (shared) mount point: not a leak.
    out["mounts"] = [m for m in mounts if m.startswith(root + "/run/")
                     and m != root + "/run/netns"]
    cgs = []
    for ctrl in Path("/sys/fs/cgroup").iterdir():
        top = ctrl / stack.cgroup_parent.lstrip("/")
        if top.is_dir():
            # A daemon's own cgroup (`Stack.own_cgroups`) is the stack's, not a leak.
            cgs += [str(p) for p in top.iterdir()
                    if p.is_dir() and not p.name.startswith("daemon-")]
    out["cgroups"] = cgs
    netns = Path(root) / "run/netns"
    out["netns"] = [str(p) for p in netns.iterdir()] if netns.is_dir() else []
    procs = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if root in cmd and ("conmon" in cmd.split(" ")[0] or "runc" in cmd.split(" ")[0]
                                or "crun" in cmd.split(" ")[0]):
                procs.append(cmd[:200])
    out["processes"] = procs
    db = Path(root) / "lib/runtimed/state.db"
    if db.exists():
        con = sqlite3.connect(str(db))
        out["state_rows"] = [f"{k}/{key}" for k, key in
                             con.execute("SELECT kind, key FROM records").fetchall()]
        con.close()
    run = Path(root) / "run/runtimed"
    # c: bundles, p: pod directories, exits: exit files, s: the monitors' socket links.
    out["run_files"] = [str(p) for d in ("c", "p", "exits", "s") for p in (run / d).glob("*")] \
        if run.is_dir() else []
    ns = Path(root) / "run/ns"
    out["ns_pins"] = [str(p) for p in ns.iterdir()] if ns.is_dir() else []
    snaps = unix_get_json(stack.socket("imaged"), "/v1/snapshots")
    out["snapshots"] = [s["key"] for s in snaps or []]
    nets = unix_get_json(stack.socket("netd"), "/v1/networks")
    out["networks"] = [n["pod_id"] for n in nets or []]
    return {k: v for k, v in out.items() if v}
