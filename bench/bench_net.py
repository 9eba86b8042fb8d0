"""netd: pod network setup and teardown latency through the real CNI plugins.

Setup is one `POST /v1/networks` (pin a new namespace, CNI ADD of bridge + host-local,
portmap, loopback); teardown is one `DELETE /v1/networks/{id}` (CNI DEL in reverse order,
unpin). Both go through `NetdClient` over netd's UNIX socket, as runtimed calls them.

    python -m bench.bench_net [--pods 50] [--concurrent 20]

Runs its own netd (a private stack under /tmp with its own bridge and /24) and removes
everything afterwards. Needs root.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from bench.harness import Row, Stats, report
from crib_common.clients.netd import NetdClient
from crib_common.models.netd import PodNetworkCreate, PortMapping
from tests.support.stack import Stack

T = TypeVar("T")


def _request(i: int, host_port: int | None = None) -> PodNetworkCreate:
    pod_id = uuid.uuid4().hex
    ports = [PortMapping(host_port=host_port, container_port=80)] if host_port else []
    return PodNetworkCreate(pod_id=pod_id, pod_name=f"bench-{i}", pod_namespace="bench",
                            pod_uid=str(uuid.uuid4()), port_mappings=ports)


async def _timed(fn: Callable[[], Awaitable[T]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


async def sequential(client: NetdClient, n: int, host_ports: bool) -> tuple[Stats, Stats]:
    """Set up then tear down `n` pods one after another."""
    ups, downs = [], []
    for i in range(n):
        req = _request(i, 30000 + i if host_ports else None)
        ups.append(await _timed(lambda: client.create_pod_network(req)))
        downs.append(await _timed(lambda: client.remove_pod_network(req.pod_id)))
    return Stats.of(ups), Stats.of(downs)


async def concurrent(client: NetdClient, n: int, width: int) -> tuple[Stats, Stats, float, float]:
    """Set up `n` pods, `width` in flight at any time; then tear them down the same way."""
    reqs = [_request(i) for i in range(n)]
    gate = asyncio.Semaphore(width)

    async def up(req: PodNetworkCreate) -> float:
        async with gate:
            return await _timed(lambda: client.create_pod_network(req))

    async def down(req: PodNetworkCreate) -> float:
        async with gate:
            return await _timed(lambda: client.remove_pod_network(req.pod_id))

    t0 = time.perf_counter()
    ups = await asyncio.gather(*(up(r) for r in reqs))
    wall_up = time.perf_counter() - t0
    t0 = time.perf_counter()
    downs = await asyncio.gather(*(down(r) for r in reqs))
    wall_down = time.perf_counter() - t0
    return Stats.of(ups), Stats.of(downs), wall_up, wall_down


async def netns_only(root: Path, n: int) -> tuple[Stats, Stats]:
    """netd's own share: pin a namespace (lo up) and unpin it, no plugins, no HTTP."""
    from netd.netns import NamespaceManager

    ns = NamespaceManager(root / "bench-netns")
    ups, downs = [], []
    for i in range(n):
        path = ns.path_for(f"bench{i}")
        name = f"bench{i}"
        ups.append(await _timed(lambda: ns.create(name)))
        downs.append(await _timed(lambda: ns.remove(path)))
    return Stats.of(ups), Stats.of(downs)


async def run(pods: int, width: int) -> str:
    stack = Stack.create(CRIB_LOG__LEVEL="info")
    try:
        stack.start(("netd",))
        async with NetdClient(stack.socket("netd")) as client:
            await sequential(client, 3, False)  # warm-up: the first ADD makes the bridge
            seq_up, seq_down = await sequential(client, pods, False)
            hp_up, hp_down = await sequential(client, pods, True)
            c_up, c_down, wall_up, wall_down = await concurrent(client, pods, width)
            leftovers = await client.list_pod_networks()
            assert not leftovers, leftovers
        ns_up, ns_down = await netns_only(stack.root, pods)
        rows = [
            Row("setup (netns + ADD)", seq_up, note=f"{pods} pods, one at a time"),
            Row("teardown (DEL + netns rm)", seq_down),
            Row("setup, with 1 hostPort", hp_up),
            Row("teardown, with 1 hostPort", hp_down),
            Row(f"setup, {width} concurrent", c_up,
                note=f"{pods} pods, {width} in flight: all up in {wall_up * 1000:.0f} ms "
                     f"({pods / wall_up:.1f} pods/s)"),
            Row(f"teardown, {width} concurrent", c_down,
                note=f"all down in {wall_down * 1000:.0f} ms ({pods / wall_down:.1f} pods/s)"),
            Row("  of which netns pin", ns_up, note="netd alone: thread+unshare+lo up+bind mount"),
            Row("  of which netns unpin", ns_down),
        ]
        return report(rows, title="netd pod network latency (real bridge/host-local/portmap/"
                                  "loopback plugins 1.1.1)", peer="-")
    finally:
        stack.cleanup()
        _remove_hostport_chains_if_unused()


def _remove_hostport_chains_if_unused() -> None:
    from tests.support import iptables

    # Per-pod chains are gone after DEL; portmap's shared chains stay unless nothing is left.
    iptables.restore_new_shared({"nat": set(), "filter": set()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--concurrent", type=int, default=20)
    args = parser.parse_args()
    print(asyncio.run(run(args.pods, args.concurrent)))


if __name__ == "__main__":
    main()
