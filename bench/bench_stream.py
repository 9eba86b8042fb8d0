"""Streaming server figures: time to first byte of `exec echo`, and port-forward throughput.

    sudo python -m bench.bench_stream [--execs 30] [--megabytes 100]

- exec TTFB: from asking for the URL to the first stdout byte of `echo hi` run by real runc
  in a busybox container, over SPDY and over WebSocket (p50/p90 of N runs); the full exec
  (until the exit status arrived) is reported beside it.
- port-forward: MB/s for sending N MB to a sink and receiving N MB from a source inside a
  real network namespace, through one forwarded connection, over SPDY and WebSocket.

The streaming server runs in-process on loopback with a `StreamTargets` that points at the
containers this script makes (tests/integration/streaming/nodes.py); everything is removed
at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import Sequence

import aiohttp
import structlog

from bench.harness import Stats
from crib_common.settings import RuntimedSection
from runtimed.streaming import ContainerTarget, ExecSpec, PortForwardSpec, StreamServer
from tests.integration.streaming.nodes import FakeTargets, Node, make_node
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--execs", type=int, default=30)
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    node = make_node()
    try:
        asyncio.run(run(args, node))
    finally:
        node.cleanup()


if __name__ == "__main__":
    main()
