"""What watching pulls costs: cold PullImage (download + verify + unpack) of a ~100 MB image
with no watcher, with one watcher reading `GET /v1/pulls/events`, with 200 of them, and
with 20 that never read; and containerd on the same image.

    python -m bench.bench_pull_progress [--layers 5] [--mb 100] [--runs 3] [--many 200]

Each run starts a fresh crib node (imaged + gateway) per mode so every pull is cold, and
the modes take turns inside a run so drift on the shared machine spreads over all of
them. Reported per mode: median seconds, MB/s of image data, the change against no
watcher, and imaged's CPU seconds for the pull (user + system, from /proc: less noisy
than wall time on a shared machine); then containerd's median. Needs root. The image is
the one `bench.bench_pull` builds.

First, in-process and without noise: what one tick of the pull table costs for a pull of
that many layers with 0, 1 and `--many` watchers (rates, stall check, building and
encoding the update once, handing it to each watcher), as a share of one core at the
ticker's 4 ticks a second; and what the download path pays per chunk for tracking.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.bench_pull import build_image, pull_once
from bench.peer_containerd import PeerContainerd
from crib_common.clients.imaged import ImagedClient
from tests.support.images import push_image
from tests.support.registry import Registry
from tests.support.stack import Stack

CLK_TCK = 100  # os.sysconf("SC_CLK_TCK") on Linux


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Watchers:
    """`n` clients streaming every pull's progress, in a thread with its own loop."""

    def __init__(self, sock: Path, n: int) -> None:
        self.sock, self.n = sock, n
        self.events = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop: asyncio.Event | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        client = ImagedClient(self.sock)

        async def one() -> None:
            async for _ in client.watch_pulls():
                self.events += 1

        tasks = [asyncio.ensure_future(one()) for _ in range(self.n)]
        await asyncio.sleep(0.5)  # connected and primed
        self._ready.set()
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()

    def __enter__(self) -> Watchers:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


class Stuck:
    """`n` connections that ask for the progress stream and never read a byte."""

    def __init__(self, sock: Path, n: int) -> None:
        self.conns: list[socket.socket] = []
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(str(sock))
            s.sendall(b"GET /v1/pulls/events HTTP/1.1\r\nHost: crib\r\n\r\n")
            self.conns.append(s)

    def __enter__(self) -> Stuck:
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.conns:
            s.close()


def tick_cost(layers: int, watchers: int, n: int = 2000) -> float:
    """Seconds per tick of a table with one pull of `layers` downloading layers whose
    bytes move every tick, watched by `watchers` readers (drained each tick)."""
    from crib_common.models.imaged import PullRequester
    from imaged.pulls import PullTable

    async def run() -> float:
        table = PullTable(300.0, tick=3600)
        pull = table.open("reg.example/app:v1", PullRequester(kind="cri"))
        table.set_layers(pull, [(f"sha256:{i:064x}", 20_000_000) for i in range(layers)])
        transfers = [table.attach(pull, digest) for digest in pull.layers]
        for tr in transfers:
            tr.state = "downloading"
        ws = [table.watch(None) for _ in range(watchers)]
        loop = asyncio.get_running_loop()
        spent = 0.0
        for i in range(n):
            for tr in transfers:
                tr.done += 65536
            t0 = time.perf_counter()
            table.tick(loop.time())
            spent += time.perf_counter() - t0
            for w in ws:  # readers take the update (what the stream handler does)
                for update in await w.next():
                    update.line
        for w in ws:
            table.unwatch(w)
        await table.close()
        return spent / n

    return asyncio.run(run())


def chunk_cost(n: int = 1_000_000) -> float:
    """Seconds the download path spends per chunk on tracking (the `advance` callback)."""
    from imaged.pulls import Transfer

    tr = Transfer("sha256:x", 1 << 40, "reg")

    def advance(k: int) -> None:
        tr.done += k

    t0 = time.perf_counter()
    for _ in range(n):
        advance(65536)
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--many", type=int, default=200)
    parser.add_argument("--no-containerd", action="store_true")
    args = parser.parse_args()

    per_chunk = chunk_cost()
    print(f"tracking per chunk on the download path: {per_chunk * 1e9:.0f} ns "
          f"(aiohttp hands over chunks of up to 64 KiB-1 MiB)")
    for n in (0, 1, args.many):
        cost = tick_cost(args.layers, n)
        print(f"pull table tick, {args.layers} layers, {n:>3} watchers: {cost * 1e6:7.1f} us "
              f"= {cost * 4 * 100:.3f}% of one core at 4 ticks/s")
    image, raw_bytes = build_image(args.layers, args.mb)
    blob_bytes = sum(len(layer.blob) for layer in image.layers)
    print(f"image: {args.layers} layers, {raw_bytes / 1e6:.1f} MB uncompressed, "
          f"{blob_bytes / 1e6:.1f} MB gzip")
    modes: dict[str, Callable[[Path], object]] = {
        "no watcher": lambda sock: _Nothing(),
        "1 watcher": lambda sock: Watchers(sock, 1),
        f"{args.many} watchers": lambda sock: Watchers(sock, args.many),
        "20 never reading": lambda sock: Stuck(sock, 20),
    }
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    events: dict[str, list[int]] = {m: [] for m in modes}
    theirs: list[float] = []
    with Registry() as registry:
        pushed = push_image(registry, "crib-bench/progress", "v1", image)
        for run in range(args.runs):
            for mode, make in modes.items():
                stack = Stack.create()
                try:
                    stack.start(("imaged", "gateway"))
                    pid = stack.procs["imaged"].pid
                    time.sleep(0.3)
                    with make(stack.socket("imaged")) as ctx:  # type: ignore[attr-defined]
                        c0 = cpu_seconds(pid)
                        wall[mode].append(pull_once(stack.cri_socket, pushed.reference))
                        cpu[mode].append(cpu_seconds(pid) - c0)
                        time.sleep(0.3)  # the final update reaches the watchers
                        events[mode].append(getattr(ctx, "events", 0))
                finally:
                    stack.cleanup()
                print(f"run {run + 1} {mode:<18} {wall[mode][-1]:6.2f}s  "
                      f"imaged cpu {cpu[mode][-1]:5.2f}s  events {events[mode][-1]}",
                      flush=True)
            if not args.no_containerd:
                with PeerContainerd(registries=[registry.host]) as ctd:
                    theirs.append(pull_once(ctd.cri_socket, pushed.reference))
                print(f"run {run + 1} {'containerd':<18} {theirs[-1]:6.2f}s", flush=True)
    base_wall = statistics.median(wall["no watcher"])
    base_cpu = statistics.median(cpu["no watcher"])
    print()
    print(f"{'cold pull, median of ' + str(args.runs):<24}{'seconds':>9}{'MB/s':>8}"
          f"{'vs none':>9}{'imaged cpu s':>14}{'vs none':>9}")
    for mode in modes:
        w, c = statistics.median(wall[mode]), statistics.median(cpu[mode])
        print(f"{'crib, ' + mode:<24}{w:>9.2f}{raw_bytes / 1e6 / w:>8.1f}"
              f"{(w / base_wall - 1) * 100:>+8.1f}%{c:>14.2f}{(c / base_cpu - 1) * 100:>+8.1f}%")
    if theirs:
        t = statistics.median(theirs)
        print(f"{'containerd':<24}{t:>9.2f}{raw_bytes / 1e6 / t:>8.1f}")
        print(f"crib (no watcher) / containerd time: {base_wall / t:.2f}x")


class _Nothing:
    events = 0

    def __enter__(self) -> _Nothing:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


if __name__ == "__main__":
    main()
