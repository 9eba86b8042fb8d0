"""Gateway speed: CRI `Version` through crib's gateway and runtimed, against containerd.

`Version` does no work in either runtime, so its round trip is the fixed cost every CRI
call pays: crib's gateway, the hop to runtimed and back; containerd's Go gRPC server. Both
are driven by the same grpcio client (bench.harness), 2,000 sequential calls after a
warm-up. Also measured, so a regression can be placed: runtimed alone through the
gateway's client over its frame socket and over HTTP (the hop the gateway adds), and the
floors of the gRPC side, servers whose handler answers a constant (no hop, no decoding):
grpclib's (what the gateway ran on before issue 14), the gateway's own, and the gateway's
own through its wrapper.

    python -m bench.bench_gateway [--n 2000] [--no-peer]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench.harness import Row, Stats, measure, report, runtime_stub  # noqa: E402
from bench.peer_containerd import PeerContainerd  # noqa: E402
from tests.support.stack import Stack  # noqa: E402


VERSION = "/runtime.v1.RuntimeService/Version"


def _runtimed_direct(socket: Path, n: int, http: bool = False) -> Stats:
    """`Version` straight to runtimed through the gateway's own client: over the frame
    socket as the gateway calls it, or (`http`) as an HTTP POST on the REST socket."""
    import uvloop

    from crib_common.client import DaemonClient

    async def run() -> Stats:
        client = DaemonClient("runtimed", socket)

        async def call() -> None:
            if http:
                await client._cri.post("/v1/cri" + VERSION, b"", {}, 10)
            else:
                await client.call_cri(VERSION, b"", timeout=10)

        try:
            for _ in range(50):
                await call()
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                await call()
                samples.append(time.perf_counter() - t0)
            return Stats.of(samples)
        finally:
            await client.close()

    return uvloop.run(run())


def _serve_floor(path: str, kind: str) -> None:
    """A floor server (run in a child process): Version answered with constant bytes by
    grpclib's own server ("grpclib", what the gateway ran before), by the gateway's server
    with a bare handler ("server"), or through the gateway's wrapper (ids, deadline,
    metrics, errors) as a LOCAL row ("wrapped")."""
    import uvloop
    from grpclib.const import Cardinality, Handler
    from grpclib.server import Server
    from prometheus_client import CollectorRegistry

    from cri_gateway.forward import Gateway, RpcMetrics
    from cri_gateway.server import CallStream, GrpcServer

    reply = b"\n\x050.1.0\x12\x04crib"

    async def constant(_request: bytes, _timeout: float | None) -> bytes:
        return reply

    async def bare(_path: str, call: CallStream) -> None:
        await call.send_message(reply)

    class Floor:
        def __mapping__(self) -> dict[str, Handler]:
            async def version(stream: Any) -> None:
                await stream.recv_message()
                await stream.send_message(reply)

            return {VERSION: Handler(version, Cardinality.UNARY_UNARY, bytes, bytes)}

    class Raw:  # grpclib codec moving bytes as they are
        __content_subtype__ = "proto"

        def encode(self, message: Any, message_type: Any) -> bytes:
            return bytes(message)

        def decode(self, data: bytes, message_type: Any) -> Any:
            return data

    async def run() -> None:
        if kind == "grpclib":
            server = Server([Floor()], codec=Raw())  # type: ignore[arg-type]
            await server.start(path=path)
            await server.wait_closed()
            return
        gateway = Gateway({}, {VERSION: constant}, max_message_bytes=16 << 20,
                          default_timeout=10, metrics=RpcMetrics(CollectorRegistry()),
                          routes={VERSION: "gateway"})
        ours = GrpcServer(gateway.serve if kind == "wrapped" else bare, max_request=16 << 20)
        await ours.start(path)
        await asyncio.Event().wait()

    uvloop.run(run())


def _floor(n: int, kind: str) -> Stats:
    from cri_api.v1 import api_pb2

    from tests.support.stack import wait_for_socket

    path = Path(f"/tmp/crib-floor-{os.getpid()}.sock")
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_gateway", "--serve-floor",
                             str(path), "--floor-kind", kind], cwd=HERE)
    try:
        wait_for_socket(path, 30, proc)
        rt = runtime_stub(path)
        return measure(lambda: rt.Version(api_pb2.VersionRequest(), timeout=10), n)
    finally:
        proc.kill()
        proc.wait()
        path.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="crib gateway Version latency")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--serve-floor", metavar="SOCKET", help=argparse.SUPPRESS)
    parser.add_argument("--floor-kind", default="server", help=argparse.SUPPRESS)
    parser.add_argument("--no-peer", action="store_true", help="skip containerd")
    args = parser.parse_args()
    if args.serve_floor:
        _serve_floor(args.serve_floor, args.floor_kind)
        return
    from cri_api.v1 import api_pb2

    # Info level, as in production: debug logging is work a benchmark should not count.
    stack = Stack.create(CRIB_LOG__LEVEL="info").start(("runtimed", "gateway"))
    try:
        rt = runtime_stub(stack.cri_socket)
        ours = measure(lambda: rt.Version(api_pb2.VersionRequest(), timeout=10), args.n)
        status = measure(lambda: rt.Status(api_pb2.StatusRequest(), timeout=10), args.n // 4)
        direct = _runtimed_direct(stack.socket("runtimed"), args.n)
        direct_http = _runtimed_direct(stack.socket("runtimed"), args.n, http=True)
    finally:
        stack.cleanup()
    floor_grpclib = _floor(args.n, "grpclib")
    floor = _floor(args.n, "server")
    wrapped = _floor(args.n, "wrapped")
    theirs = pstatus = None
    if not args.no_peer:
        with PeerContainerd() as peer:
            prt = runtime_stub(peer.cri_socket)
            theirs = measure(lambda: prt.Version(api_pb2.VersionRequest(), timeout=10),
                             args.n)
            pstatus = measure(lambda: prt.Status(api_pb2.StatusRequest(), timeout=10),
                              args.n // 4)
    print(report(
        [
            Row("Version (gateway+runtimed)", ours, theirs),
            Row("Status (gateway, 3 health)", status, pstatus),
            Row("runtimed frame hop alone", direct, None, "DaemonClient.call_cri, no gRPC"),
            Row("runtimed HTTP hop alone", direct_http, None, "the same over HTTP/1.1"),
            Row("grpclib server floor", floor_grpclib, None, "constant answer, bare handler"),
            Row("gateway server floor", floor, None, "constant answer, bare handler"),
            Row("gateway wrapper (no hop)", wrapped, None, "constant answer as a LOCAL row"),
        ],
        title=f"CRI gateway latency, sequential calls, grpcio client (cpus={os.cpu_count()})",
    ))
    print(f"Version p50 {ours.p50:.3f} ms, p90 {ours.p90:.3f} ms, mean {ours.mean:.3f} ms "
          f"(target p50 < 1 ms)")


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
