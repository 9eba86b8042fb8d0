"""Gateway speed: CRI `Version` through crib's gateway and runtimed, against containerd.

`Version` does no work in either runtime, so its round trip is the fixed cost every CRI
call pays: crib's grpclib gateway, the HTTP hop to runtimed and back; containerd's Go gRPC
server. Both are driven by the same grpcio client (bench.harness), 2,000 sequential calls
after a warm-up. Also measured: runtimed alone over its HTTP socket (the hop the gateway
adds on top), so a regression can be placed.

    python -m bench.bench_gateway [--n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench.harness import Row, Stats, measure, report, runtime_stub  # noqa: E402
from bench.peer_containerd import PeerContainerd  # noqa: E402
from tests.support.stack import Stack  # noqa: E402


def _runtimed_direct(socket: Path, n: int) -> Stats:
    """`Version` straight to runtimed's socket through the gateway's own client."""
    import uvloop

    from crib_common.client import DaemonClient

    async def run() -> Stats:
        client = DaemonClient("runtimed", socket)
        try:
            for _ in range(50):
                await client.call_cri("/runtime.v1.RuntimeService/Version", b"", timeout=10)
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                await client.call_cri("/runtime.v1.RuntimeService/Version", b"", timeout=10)
                samples.append(time.perf_counter() - t0)
            return Stats.of(samples)
        finally:
            await client.close()

    return uvloop.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description="crib gateway Version latency")
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    from cri_api.v1 import api_pb2

    # Info level, as in production: debug logging is work a benchmark should not count.
    stack = Stack.create(CRIB_LOG__LEVEL="info").start(("runtimed", "gateway"))
    try:
        rt = runtime_stub(stack.cri_socket)
        ours = measure(lambda: rt.Version(api_pb2.VersionRequest(), timeout=10), args.n)
        status = measure(lambda: rt.Status(api_pb2.StatusRequest(), timeout=10), args.n // 4)
        direct = _runtimed_direct(stack.socket("runtimed"), args.n)
    finally:
        stack.cleanup()
    with PeerContainerd() as peer:
        prt = runtime_stub(peer.cri_socket)
        theirs = measure(lambda: prt.Version(api_pb2.VersionRequest(), timeout=10), args.n)
        pstatus = measure(lambda: prt.Status(api_pb2.StatusRequest(), timeout=10), args.n // 4)
    print(report(
        [
            Row("Version (gateway+runtimed)", ours, theirs),
            Row("Status (gateway, 3 health)", status, pstatus),
            Row("runtimed HTTP hop alone", direct, None, "DaemonClient.call_cri, no gRPC"),
        ],
        title=f"CRI gateway latency, sequential calls, grpcio client (cpus={os.cpu_count()})",
    ))
    print(f"Version p50 {ours.p50:.3f} ms, p90 {ours.p90:.3f} ms, mean {ours.mean:.3f} ms "
          f"(target p50 < 1 ms)")


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
