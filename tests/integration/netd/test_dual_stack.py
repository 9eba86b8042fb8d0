"""Dual stack: the default network with an IPv6 range gives each pod a v4 and a v6
address (PodSandboxStatus needs both), and pods talk over IPv6."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crib_common.clients.netd import NetdClient
from tests.support.stack import Stack

from tests.support import iptables
from .helpers import connect_from, pod_request, stop

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dual_stack() -> Iterator[Stack]:
    before = iptables.snapshot()
    before6 = _ip6_rules()
    stack = Stack.create()
    stack.extra_env["CRIB_NETD__DEFAULT_SUBNET6"] = f"fd00:c71b:{stack.net_index:x}::/64"
    try:
        stack.start(("netd",))
        yield stack
    finally:
        stack.cleanup()
        iptables.remove_matching([f"crib-{stack.bridge}"])
        iptables.restore_new_shared(before)
        _restore_ip6(before6, f"crib-{stack.bridge}")


def _ip6_rules() -> set[str]:
    out = subprocess.run(["ip6tables", "-t", "nat", "-S"], capture_output=True, text=True)
    return set(out.stdout.splitlines())


def _restore_ip6(before: set[str], network: str) -> None:
    """Undo ip6tables leftovers of this network (bridge ipMasq chains are removed on DEL;
    this only guards against a failed test)."""
    import shlex

    for line in sorted(_ip6_rules() - before):
        if line.startswith("-A ") and network in line:
            subprocess.run(["ip6tables", "-t", "nat", "-D", *shlex.split(line)[1:]],
                           capture_output=True)


async def test_pods_get_v4_and_v6_and_talk_over_v6(dual_stack: Stack) -> None:
    a, b = pod_request(), pod_request()
    async with NetdClient(dual_stack.socket("netd")) as netd:
        net_a = await netd.create_pod_network(a)
        net_b = await netd.create_pod_network(b)
        try:
            for net in (net_a, net_b):
                assert sorted(ip.family for ip in net.ips) == [4, 6]
                v6 = next(ip for ip in net.ips if ip.family == 6)
                assert ipaddress.ip_address(v6.ip) in ipaddress.ip_network(
                    f"fd00:c71b:{dual_stack.net_index:x}::/64")
            # The first address is the IPv4 one, as the CRI's PodSandboxNetworkStatus.ip.
            assert net_a.ips[0].family == 4
            v6_a = next(ip.ip for ip in net_a.ips if ip.family == 6)
            server = subprocess.Popen(
                ["nsenter", f"--net={net_a.netns_path}", sys.executable, "-c",
                 "import socket\ns=socket.socket(socket.AF_INET6)\n"
                 "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                 "s.bind(('::', 7070)); s.listen(1); print('listening', flush=True)\n"
                 "c,p=s.accept(); c.sendall(b'crib:'+p[0].encode()); c.close()"],
                stdout=subprocess.PIPE, text=True)
            try:
                assert server.stdout is not None and "listening" in server.stdout.readline()
                v6_b = next(ip.ip for ip in net_b.ips if ip.family == 6)
                assert connect_from(net_b.netns_path, v6_a, 7070) == f"crib:{v6_b}"
            finally:
                stop(server)
            await netd.check_pod_network(a.pod_id)
        finally:
            await netd.remove_pod_network(a.pod_id)
            await netd.remove_pod_network(b.pod_id)
        leases = dual_stack.root / "lib/netd/ipam" / f"crib-{dual_stack.bridge}"
        assert not [p for p in leases.iterdir() if ":" in p.name or p.name[0].isdigit()]
        assert not Path(net_a.netns_path).exists()
