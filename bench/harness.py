"""Drive any CRI endpoint with one client and report per-RPC latency against a peer.

The client is the independent grpcio stubs of PyPI `container-runtime-interface-api`
(`cri_api.v1`), so crib and containerd are measured through the same code path.

Reusable pieces for other bench scripts:

    stub = runtime_stub(path)                 # RuntimeServiceStub on unix://path
    stats = measure(lambda: stub.Version(api_pb2.VersionRequest()), 2000)
    print(report([Row("Version", ours=stats, peer=peer_stats)]))

Run directly to measure the read-only RPCs of one or two endpoints:

    python -m bench.harness --socket /run/crib/cri.sock --peer /tmp/cribctd-x/containerd.sock
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Row",
    "Stats",
    "channel",
    "image_stub",
    "measure",
    "report",
    "runtime_stub",
    "READ_ONLY_RPCS",
]


@dataclass(frozen=True)
class Stats:
    """Latency figures of one measured call, in milliseconds."""

    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, samples_s: Sequence[float]) -> Stats:
        """Stats of raw samples given in seconds."""
        if not samples_s:
            raise ValueError("no samples")
        ms = sorted(s * 1000.0 for s in samples_s)
        return cls(
            n=len(ms), p50=_percentile(ms, 50), p90=_percentile(ms, 90),
            p99=_percentile(ms, 99), mean=statistics.fmean(ms), min=ms[0], max=ms[-1],
        )


def _percentile(sorted_ms: Sequence[float], pct: float) -> float:
    # Nearest-rank on the sorted samples: simple, and exact for the n we use.
    rank = max(1, min(len(sorted_ms), round(pct / 100.0 * len(sorted_ms) + 0.5)))
    return sorted_ms[rank - 1]


def measure(fn: Callable[[], Any], n: int, *, warmup: int = 50) -> Stats:
    """Call `fn` `warmup` times unmeasured, then `n` times one after another; its Stats."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return Stats.of(samples)


def channel(socket: str | Path) -> Any:
    """A grpcio channel to a CRI UNIX socket, with the kubelet's 16 MiB message limits."""
    import grpc

    limit = 16 * 1024 * 1024
    return grpc.insecure_channel(
        f"unix://{socket}",
        options=[("grpc.max_receive_message_length", limit),
                 ("grpc.max_send_message_length", limit)],
    )


def runtime_stub(socket: str | Path) -> Any:
    """`RuntimeServiceStub` on the socket (keep a reference: the channel lives with it)."""
    from cri_api.v1 import api_pb2_grpc

    return api_pb2_grpc.RuntimeServiceStub(channel(socket))  # type: ignore[no-untyped-call]


def image_stub(socket: str | Path) -> Any:
    """`ImageServiceStub` on the socket."""
    from cri_api.v1 import api_pb2_grpc

    return api_pb2_grpc.ImageServiceStub(channel(socket))  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Row:
    """One line of a report: an operation measured on our endpoint and maybe the peer's."""

    name: str
    ours: Stats | None
    peer: Stats | None = None
    note: str = ""


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:8.3f}"


def report(
    rows: Sequence[Row], *, title: str = "", ours: str = "crib", peer: str = "containerd"
) -> str:
    """A fixed-width table: p50/p90 (ms) of each side and the p50 ratio ours/peer."""
    head = (
        f"{'operation':<28} {'n':>6} {ours + ' p50':>12} {ours + ' p90':>12} "
        f"{peer + ' p50':>16} {peer + ' p90':>16} {'ratio p50':>10}"
    )
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for row in rows:
        ratio = (
            f"{row.ours.p50 / row.peer.p50:9.2f}x"
            if row.ours is not None and row.peer is not None and row.peer.p50 > 0 else "-"
        )
        n = row.ours.n if row.ours is not None else (row.peer.n if row.peer else 0)
        line = (
            f"{row.name:<28} {n:>6} {_fmt(row.ours.p50 if row.ours else None):>12} "
            f"{_fmt(row.ours.p90 if row.ours else None):>12} "
            f"{_fmt(row.peer.p50 if row.peer else None):>16} "
            f"{_fmt(row.peer.p90 if row.peer else None):>16} {ratio:>10}"
        )
        if row.note:
            line += f"  {row.note}"
        lines.append(line)
    lines.append("(milliseconds; ratio = ours / peer, below 1 means crib is faster)")
    return "\n".join(lines)


def _read_only_calls(socket: str | Path) -> dict[str, Callable[[], Any]]:
    from cri_api.v1 import api_pb2

    rt, im = runtime_stub(socket), image_stub(socket)
    return {
        "Version": lambda: rt.Version(api_pb2.VersionRequest(), timeout=10),
        "Status": lambda: rt.Status(api_pb2.StatusRequest(), timeout=10),
        "ListPodSandbox": lambda: rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10),
        "ListContainers": lambda: rt.ListContainers(api_pb2.ListContainersRequest(), timeout=10),
        "ListImages": lambda: im.ListImages(api_pb2.ListImagesRequest(), timeout=10),
        "ImageFsInfo": lambda: im.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=10),
    }


READ_ONLY_RPCS = ("Version", "Status", "ListPodSandbox", "ListContainers", "ListImages",
                  "ImageFsInfo")


def _try_measure(fn: Callable[[], Any], n: int) -> tuple[Stats | None, str]:
    import grpc

    try:
        return measure(fn, n), ""
    except grpc.RpcError as exc:
        return None, f"{exc.code().name}: {exc.details()}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", required=True, help="CRI socket of the endpoint measured")
    parser.add_argument("--peer", help="CRI socket of the endpoint compared against")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rpc", default=",".join(READ_ONLY_RPCS),
                        help="comma-separated read-only RPCs")
    args = parser.parse_args(argv)
    ours_calls = _read_only_calls(args.socket)
    peer_calls = _read_only_calls(args.peer) if args.peer else {}
    rows = []
    for name in args.rpc.split(","):
        ours, note = _try_measure(ours_calls[name], args.n)
        peer_stats, peer_note = (
            _try_measure(peer_calls[name], args.n) if peer_calls else (None, "")
        )
        rows.append(Row(name, ours, peer_stats, note or peer_note))
    print(report(rows, title=f"CRI latency, {args.n} sequential calls each"))


if __name__ == "__main__":
    main()
