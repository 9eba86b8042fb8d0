"""Pod networking through Debian's real CNI plugins: bridge, host-local, portmap, loopback."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from crib_common.clients.netd import NetdClient
from crib_common.errors import InvalidArgument, NotFound
from crib_common.models.netd import PortMapping

from .conftest import NetdNode
from .helpers import connect_from, connect_host, free_port, pod_request, start_server, stop

pytestmark = pytest.mark.integration


async def test_two_pods_reach_each_other(netd_node: NetdNode, netd: NetdClient) -> None:
    a, b = pod_request(), pod_request()
    net_a = await netd.create_pod_network(a)
    net_b = await netd.create_pod_network(b)
    try:
        subnet = ipaddress.ip_network(f"{netd_node.subnet_prefix}0/24")
        for net in (net_a, net_b):
            assert len(net.ips) == 1 and net.ips[0].family == 4
            assert ipaddress.ip_address(net.ips[0].ip) in subnet
            assert net.ips[0].interface == "eth0"
            assert Path(net.netns_path).parent == netd_node.netns_dir
            assert net.netns_present and net.state == "ready"
        assert net_a.ips[0].ip != net_b.ips[0].ip
        assert {net_a.ips[0].ip, net_b.ips[0].ip} <= netd_node.leases()
        server = start_server(net_a.netns_path, 8080)
        try:
            # Pod to pod over the bridge; the server sees b's own address (no NAT inside).
            assert connect_from(net_b.netns_path, net_a.ips[0].ip, 8080) == \
                f"crib:{net_b.ips[0].ip}"
            # lo is up inside the pod.
            assert connect_from(net_a.netns_path, "127.0.0.1", 8080) == "crib:127.0.0.1"
        finally:
            stop(server)
        # Idempotent per pod id: the same attachment comes back.
        again = await netd.create_pod_network(a)
        assert again.ips == net_a.ips and again.netns_path == net_a.netns_path
        await netd.check_pod_network(a.pod_id)
        # Operators may use a unique prefix, as with crictl.
        assert (await netd.get_pod_network(a.pod_id[:12])).pod_id == a.pod_id
        listed = {n.pod_id for n in await netd.list_pod_networks()}
        assert {a.pod_id, b.pod_id} <= listed
    finally:
        await netd.remove_pod_network(a.pod_id)
        await netd.remove_pod_network(b.pod_id)
    assert not {net_a.ips[0].ip, net_b.ips[0].ip} & netd_node.leases()
    assert not Path(net_a.netns_path).exists() and not Path(net_b.netns_path).exists()
    with pytest.raises(NotFound):
        await netd.get_pod_network(a.pod_id)


async def test_host_port_answers_on_loopback(netd_node: NetdNode, netd: NetdClient) -> None:
    host_port = free_port()
    req = pod_request([PortMapping(host_port=host_port, container_port=8080, protocol="TCP")])
    net = await netd.create_pod_network(req)
    try:
        assert [p.host_port for p in net.port_mappings] == [host_port]
        # portmap 1.1.1 (snat on by default) sets route_localnet on the bridge itself so
        # that 127.0.0.1 may be DNATed across it; netd needs no sysctl of its own.
        bridge = netd_node.stack.bridge
        assert Path(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet").read_text().strip() == "1"
        server = start_server(net.netns_path, 8080)
        try:
            reply = connect_host("127.0.0.1", host_port)
            # Masqueraded: the pod sees the bridge gateway, not 127.0.0.1.
            assert reply.startswith("crib:") and reply != "crib:127.0.0.1"
            await netd.check_pod_network(req.pod_id)
        finally:
            stop(server)
    finally:
        await netd.remove_pod_network(req.pod_id)
    with pytest.raises(OSError):
        connect_host("127.0.0.1", host_port)


async def test_remove_unknown_and_half_created(netd_node: NetdNode, netd: NetdClient) -> None:
    req = pod_request()
    await netd.remove_pod_network(req.pod_id)  # never created: success
    # A pin file left by a crash between creating the file and mounting it (no record).
    stray = netd_node.netns_dir / f"crib-{req.pod_id}"
    stray.touch()
    await netd.remove_pod_network(req.pod_id)
    assert not stray.exists()
    await netd.remove_pod_network(req.pod_id)


async def test_bad_pod_id_is_invalid_argument(netd: NetdClient) -> None:
    req = pod_request()
    req.pod_id = "../etc"
    with pytest.raises(InvalidArgument, match="bad pod id"):
        await netd.create_pod_network(req)
    with pytest.raises(InvalidArgument):
        await netd.remove_pod_network("-x;y")


async def test_del_uses_cached_config_after_conf_change(netd_node: NetdNode,
                                                        netd: NetdClient) -> None:
    req = pod_request()
    net = await netd.create_pod_network(req)
    ip = net.ips[0].ip
    # An operator drops a different network in front of ours: DEL must still use ours.
    other = netd_node.write_conf("00-other.conflist", {
        "cniVersion": "1.0.0", "name": "crib-other",
        "plugins": [{"type": "bridge", "bridge": "cribx0",
                     "ipam": {"type": "host-local", "subnet": "10.214.0.0/24",
                              "dataDir": str(netd_node.root / "other-ipam")}}],
    })
    try:
        assert (await netd.get_pod_network(req.pod_id)).config_source.endswith(
            "10-crib.conflist")
        await netd.check_pod_network(req.pod_id)
        await netd.remove_pod_network(req.pod_id)
    finally:
        other.unlink()
    assert ip not in netd_node.leases()
    assert not Path("/sys/class/net/cribx0").exists()


async def test_cli_lists_attachments_and_config(netd_node: NetdNode, netd: NetdClient) -> None:
    import subprocess

    from tests.support.stack import BIN

    req = pod_request()
    net = await netd.create_pod_network(req)
    try:
        env = netd_node.stack.env()
        out = subprocess.run([str(BIN / "crib"), "net", "list"], env=env, capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        line = next(l for l in out.stdout.splitlines() if l.startswith(req.pod_id[:13]))
        assert net.ips[0].ip in line and f"crib-test/{req.pod_name}" in line
        out = subprocess.run([str(BIN / "crib"), "net", "config"], env=env, capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "bridge -> portmap -> loopback" in out.stdout
        out = subprocess.run([str(BIN / "crib"), "net", "ns"], env=env, capture_output=True,
                             text=True, timeout=30)
        assert f"crib-{req.pod_id}" in out.stdout
    finally:
        await netd.remove_pod_network(req.pod_id)


async def test_gc_removes_orphan_namespaces_only(netd_node: NetdNode, netd: NetdClient) -> None:
    import subprocess

    req = pod_request()
    net = await netd.create_pod_network(req)
    orphan = netd_node.netns_dir / "crib-orphan0"
    orphan.touch()
    # A pin made behind netd's back (util-linux makes it persistent by bind mount).
    subprocess.run(["unshare", f"--net={orphan}", "true"], check=True)
    try:
        names = {ns.path: ns for ns in await netd.list_namespaces()}
        assert names[str(orphan)].pinned and not names[str(orphan)].attached
        report = await netd.gc()
        assert report.removed_namespaces == [str(orphan)]
        assert not report.cni_gc_ran  # Debian's plugins speak CNI 1.0.0: no GC command
        assert not report.errors
        assert not orphan.exists() and Path(net.netns_path).exists()
    finally:
        subprocess.run(["umount", str(orphan)], capture_output=True)
        orphan.unlink(missing_ok=True)
        await netd.remove_pod_network(req.pod_id)


async def test_del_after_a_firewall_flush_still_releases_the_pod(
        netd_node: NetdNode, netd: NetdClient) -> None:
    """A firewall reload that flushes the nat table takes the attachment's masquerade
    chain with it; Debian's bridge plugin then fails DEL, and without netd's tolerance
    the pod could never be removed."""
    from tests.support import iptables

    req = pod_request()
    net = await netd.create_pod_network(req)
    ip = net.ips[0].ip
    # The bridge plugin's rule and chain carry the attachment's id in their comment.
    iptables.remove_matching([req.pod_id])
    assert not any(req.pod_id in line for line in iptables.rules("nat"))
    await netd.remove_pod_network(req.pod_id)
    assert ip not in netd_node.leases()
    assert not Path(net.netns_path).exists()
    with pytest.raises(NotFound):
        await netd.get_pod_network(req.pod_id)
