"""Streaming server figures: time to first byte of `exec echo`, and port-forward throughput.

    sudo python -m bench.bench_stream [--execs 30] [--megabytes 100] [--no-cri]

- exec TTFB: from asking for the URL to the first stdout byte of `echo hi` run by real runc
  in a busybox container, over SPDY and over WebSocket (p50/p90 of N runs); the full exec
  (until the exit status arrived) is reported beside it.
- port-forward: MB/s for sending N MB to a sink and receiving N MB from a source inside a
  real network namespace, through one forwarded connection, over SPDY and WebSocket.

The streaming server runs in-process on loopback with a `StreamTargets` that points at the
containers this script makes (tests/integration/streaming/nodes.py); everything is removed
at the end.

Then, unless --no-cri, the kubelet's view against Debian's containerd (bench/peer_containerd)
with the same client: a pod of the busybox test image on each, `Exec` through CRI (crib:
gateway -> runtimed) and the returned URL until the first byte of `echo hi` over SPDY, and an
HTTP download of N MB from busybox httpd in the pod through `PortForward` (SPDY).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import structlog

from cri_api.v1 import api_pb2

from bench.harness import Row, Stats, image_stub, report, runtime_stub
from bench.peer_containerd import PeerContainerd
from crib_common.settings import RuntimedSection
from runtimed.streaming import ContainerTarget, ExecSpec, PortForwardSpec, StreamServer
from tests.integration.streaming.nodes import FakeTargets, Node, make_node
from tests.support.images import busybox_image, push_image
from tests.support.registry import Registry
from tests.support.stack import Stack
from tests.support.streamclient import SpdyPortForward, open_stdio, ws_port_forward

SINK, SOURCE = 19090, 19091

# In the pod netns: SINK counts what it gets and answers the count at EOF; SOURCE sends the
# number of bytes named in its first line.
SERVER = f"""
import socket, threading
def sink(c):
    n = 0
    while True:
        d = c.recv(1 << 20)
        if not d:
            break
        n += len(d)
    c.sendall(str(n).encode()); c.close()
def source(c):
    line = b""
    while not line.endswith(b"\\n"):
        line += c.recv(64)
    n = int(line); chunk = b"x" * (1 << 20)
    while n > 0:
        c.sendall(chunk[:min(n, len(chunk))]); n -= len(chunk)
    c.close()
def serve(port, fn):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(8)
    while True:
        c, _ = s.accept(); threading.Thread(target=fn, args=(c,), daemon=True).start()
threading.Thread(target=serve, args=({SOURCE}, source), daemon=True).start()
print("ready", flush=True)
serve({SINK}, sink)
"""


class BenchTargets(FakeTargets):
    """The test targets without their `runc state` per lookup: runtimed answers from memory,
    so the bench should not pay a runtime call there."""

    async def container_target(self, container_id: str) -> ContainerTarget:
        c = self.node.containers[container_id]
        return ContainerTarget(id=c.id, running=True, runtime_path="/usr/sbin/runc",
                               runtime_root=self.node.runc_root)


async def exec_ttfb(srv: StreamServer, cid: str, transport: str,
                    n: int) -> tuple[Stats, Stats]:
    first: list[float] = []
    total: list[float] = []
    for _ in range(n + 3):
        t0 = time.perf_counter()
        url = srv.url(ExecSpec(cid, ("echo", "hi"), stdin=False, stdout=True, stderr=True,
                               tty=False))
        client = await open_stdio(url, transport)
        while not client.stdout:
            await asyncio.sleep(0.0005)
        t1 = time.perf_counter()
        result = await client.wait()
        t2 = time.perf_counter()
        assert result.stdout == b"hi\n" and result.exit_code == 0
        first.append(t1 - t0)
        total.append(t2 - t0)
    return Stats.of(first[3:]), Stats.of(total[3:])


async def runc_baseline(node: Node, cid: str, n: int) -> Stats:
    """The same `echo hi` through `runc exec` directly: the floor under exec TTFB."""
    samples: list[float] = []
    for _ in range(n + 3):
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            "/usr/sbin/runc", "--root", str(node.runc_root), "exec", cid, "echo", "hi",
            stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        samples.append(time.perf_counter() - t0)
        assert out == b"hi\n"
    return Stats.of(samples[3:])


async def spdy_throughput(srv: StreamServer, pod: str, size: int) -> tuple[float, float]:
    pf = await SpdyPortForward().connect(srv.url(PortForwardSpec(pod, ())))
    try:
        chunk = b"y" * (256 * 1024)
        conn = await pf.open(SINK)
        t0 = time.perf_counter()
        sent = 0
        while sent < size:
            await conn.send(chunk)
            sent += len(chunk)
        await conn.close_write()
        count = int(await conn.read_all(timeout=300))
        up = time.perf_counter() - t0
        assert count == sent, (count, sent)
        conn = await pf.open(SOURCE)
        t0 = time.perf_counter()
        await conn.send(f"{size}\n".encode())
        got = 0
        while data := await conn.data.read():
            got += len(data)
        down = time.perf_counter() - t0
        assert got == size, (got, size)
        return sent / up / 1e6, got / down / 1e6
    finally:
        await pf.close()


async def ws_throughput(srv: StreamServer, pod: str, size: int) -> float:
    async with ws_port_forward(srv.url(PortForwardSpec(pod, ())), [SOURCE]) as ws:
        t0 = time.perf_counter()
        await ws.send_bytes(b"\x00" + f"{size}\n".encode())
        got = 0
        while got < size:
            msg = await ws.receive(timeout=60)
            if msg.type != aiohttp.WSMsgType.BINARY:
                break
            if msg.data[0] == 0:
                got += len(msg.data) - 1
        assert got == size, (got, size)
        return got / (time.perf_counter() - t0) / 1e6


async def run(args: argparse.Namespace, node: Node) -> None:
    targets = BenchTargets(node)
    srv = StreamServer(RuntimedSection(), targets)
    await srv.start()
    cid = node.run(["sleep", "3600"]).id
    netns = node.add_netns()
    proc = subprocess.Popen(["nsenter", f"--net={netns}", sys.executable, "-c", SERVER],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        targets.sandboxes["crib-bench-pod"] = netns
        print(f"exec echo through the streaming server (runc {node.runc_root}), "
              f"{args.execs} runs each, ms")
        print(f"{'transport':<10}{'ttfb p50':>10}{'ttfb p90':>10}{'full p50':>10}"
              f"{'full p90':>10}")
        for transport in ("spdy", "ws"):
            first, full = await exec_ttfb(srv, cid, transport, args.execs)
            print(f"{transport:<10}{first.p50:>10.1f}{first.p90:>10.1f}{full.p50:>10.1f}"
                  f"{full.p90:>10.1f}")
        base = await runc_baseline(node, cid, args.execs)
        print(f"{'runc only':<10}{'':>10}{'':>10}{base.p50:>10.1f}{base.p90:>10.1f}")
        size = args.megabytes * 1000 * 1000
        up, down = await spdy_throughput(srv, "crib-bench-pod", size)
        ws_down = await ws_throughput(srv, "crib-bench-pod", size)
        print(f"port-forward {args.megabytes} MB, one connection, MB/s")
        print(f"  spdy  client->pod {up:8.1f}   pod->client {down:8.1f}")
        print(f"  ws                         pod->client {ws_down:8.1f}")
    finally:
        proc.kill()
        proc.wait()
        await srv.stop()


# -- through CRI, against containerd ----------------------------------------------------

WEB = ("mkdir -p /tmp/www && head -c {size} /dev/zero > /tmp/www/big && "
       "exec httpd -f -p 127.0.0.1:8080 -h /tmp/www")


class CriPod:
    """A pod with a sleeper and an httpd container on one CRI endpoint (grpcio stubs)."""

    def __init__(self, socket: Path, image: str, size: int) -> None:
        self.runtime = runtime_stub(socket)
        self.images = image_stub(socket)
        self.image = image
        uid = uuid.uuid4().hex[:8]
        self.log_dir = Path(tempfile.mkdtemp(prefix="crib-bench-logs-"))
        self.config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=f"crib-bench-{uid}", uid=uid,
                                                namespace="default"),
            log_directory=str(self.log_dir))
        self.size = size
        self.id = ""
        self.containers: dict[str, str] = {}

    def start(self) -> CriPod:
        self.images.PullImage(api_pb2.PullImageRequest(
            image=api_pb2.ImageSpec(image=self.image)), timeout=300)
        self.id = self.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(
            config=self.config), timeout=120).pod_sandbox_id
        for name, args in (("sleeper", ["sleep", "3600"]),
                           ("web", ["sh", "-c", WEB.format(size=self.size)])):
            cid = self.runtime.CreateContainer(api_pb2.CreateContainerRequest(
                pod_sandbox_id=self.id, sandbox_config=self.config,
                config=api_pb2.ContainerConfig(
                    metadata=api_pb2.ContainerMetadata(name=name), command=args,
                    image=api_pb2.ImageSpec(image=self.image), log_path=f"{name}.log")),
                timeout=120).container_id
            self.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid),
                                        timeout=60)
            self.containers[name] = cid
        return self

    def stop(self) -> None:
        try:
            if self.id:
                self.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(
                    pod_sandbox_id=self.id), timeout=60)
                self.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(
                    pod_sandbox_id=self.id), timeout=60)
        finally:
            shutil.rmtree(self.log_dir, ignore_errors=True)


async def cri_exec_ttfb(pod: CriPod, n: int) -> Stats:
    samples: list[float] = []
    request = api_pb2.ExecRequest(container_id=pod.containers["sleeper"], cmd=["echo", "hi"],
                                  stdout=True, stderr=True)
    for _ in range(n + 3):
        t0 = time.perf_counter()
        url = pod.runtime.Exec(request, timeout=10).url
        client = await open_stdio(url, "spdy")
        while not client.stdout:
            await asyncio.sleep(0.0005)
        samples.append(time.perf_counter() - t0)
        result = await client.wait()
        assert result.stdout == b"hi\n" and result.exit_code == 0, result
    return Stats.of(samples[3:])


async def cri_download(pod: CriPod) -> float:
    # httpd starts once the file is written: wait for it with ExecSync, then download once.
    ready = api_pb2.ExecSyncRequest(container_id=pod.containers["web"], timeout=10,
                                    cmd=["sh", "-c", "pidof httpd"])
    for _ in range(600):
        if pod.runtime.ExecSync(ready, timeout=20).exit_code == 0:
            break
        await asyncio.sleep(0.1)
    url = pod.runtime.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=pod.id,
                                                             port=[8080]), timeout=10).url
    pf = await SpdyPortForward().connect(url)
    try:
        conn = await pf.open(8080)
        await conn.send(b"GET /big HTTP/1.0\r\n\r\n")
        t0 = time.perf_counter()
        got = 0
        while data := await conn.data.read():
            got += len(data)
        elapsed = time.perf_counter() - t0
        if got <= pod.size:
            raise RuntimeError(f"short download: {got} bytes; "
                               f"error stream: {await conn.error_text()!r}")
        return pod.size / elapsed / 1e6
    finally:
        await pf.close()


async def measure_endpoint(socket: Path, image: str, args: argparse.Namespace,
                           ) -> tuple[Stats, float]:
    pod = CriPod(socket, image, args.megabytes * 1000 * 1000)
    try:
        await asyncio.to_thread(pod.start)
        return await cri_exec_ttfb(pod, args.execs), await cri_download(pod)
    finally:
        await asyncio.to_thread(pod.stop)  # also after a failed start: log dir, sandbox


class Peer(PeerContainerd):
    """containerd that clamps the pause container's oom_score_adj (-998) to its own: this
    machine has no CAP_SYS_RESOURCE, and runc init fails on a negative value."""

    def config_text(self) -> str:
        return super().config_text().replace(
            "  enable_selinux = false", "  enable_selinux = false\n  restrict_oom_score_adj = true")


def cri_compare(args: argparse.Namespace) -> None:
    with Registry() as registry:
        pushed = push_image(registry, "crib-bench/busybox", "v1",
                            busybox_image(cmd=["sleep", "3600000"]))
        stack = Stack.create(CRIB_LOG__LEVEL="warning")
        try:
            stack.start()
            ours = asyncio.run(measure_endpoint(stack.cri_socket, pushed.reference, args))
        finally:
            stack.cleanup()
        # The busybox image doubles as containerd's pause image (its Cmd sleeps).
        with Peer(registries=[registry.host],
                            sandbox_image=pushed.reference) as ctd:
            peer = asyncio.run(measure_endpoint(ctd.cri_socket, pushed.reference, args))
    print()
    print(report([Row("CRI Exec + echo, first byte", ours[0], peer[0],
                      note="Exec RPC, URL, SPDY upgrade, streams, runc exec")],
                 title=f"through CRI (SPDY client), {args.execs} runs"))
    print(f"port-forward download {args.megabytes} MB from httpd in the pod (SPDY), MB/s: "
          f"crib {ours[1]:.1f}   containerd {peer[1]:.1f}   ratio {ours[1] / peer[1]:.2f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--execs", type=int, default=30)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--no-cri", action="store_true",
                        help="skip the comparison with containerd through CRI")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    node = make_node()
    try:
        asyncio.run(run(args, node))
    finally:
        node.cleanup()
    if not args.no_cri:
        cri_compare(args)


if __name__ == "__main__":
    main()
