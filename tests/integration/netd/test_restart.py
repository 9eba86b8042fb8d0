"""kill -9 netd around and inside CNI operations: nothing is forgotten, nothing leaks."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from crib_common.clients.netd import NetdClient
from crib_common.errors import CribError, FailedPrecondition, NotFound

from tests.support import iptables
from .conftest import NetdNode
from .helpers import connect_from, pod_request, start_server, stop

pytestmark = pytest.mark.integration


async def test_sigkill_between_add_and_del(netd_node: NetdNode, netd: NetdClient) -> None:
    a, b = pod_request(), pod_request()
    net_a = await netd.create_pod_network(a)
    net_b = await netd.create_pod_network(b)
    netd_node.restart()  # SIGKILL, then start again
    await netd.close()
    # Both attachments and namespaces are still accounted for, and still work.
    after = {n.pod_id: n for n in await netd.list_pod_networks()}
    assert after[a.pod_id].ips == net_a.ips and after[a.pod_id].netns_present
    assert after[b.pod_id].ips == net_b.ips
    namespaces = {ns.pod_id: ns for ns in
                  await netd.get_list("/v1/namespaces", _namespace_model())}
    assert namespaces[a.pod_id].pinned and namespaces[a.pod_id].attached
    server = start_server(net_a.netns_path, 9090)
    try:
        assert connect_from(net_b.netns_path, net_a.ips[0].ip, 9090).startswith("crib:")
    finally:
        stop(server)
    await netd.check_pod_network(a.pod_id)
    await netd.remove_pod_network(a.pod_id)
    await netd.remove_pod_network(b.pod_id)
    assert not {net_a.ips[0].ip, net_b.ips[0].ip} & netd_node.leases()
    assert not Path(net_a.netns_path).exists()
    assert not iptables.cni_lines_mentioning([a.pod_id, b.pod_id])


async def test_sigkill_during_add_is_rolled_back(netd_node: NetdNode, netd: NetdClient) -> None:
    conf = netd_node.default_conf()
    conf["plugins"].append({"type": "crib-fake"})  # type: ignore[attr-defined]
    front = netd_node.write_conf("00-hang.conflist", conf)
    netd_node.fake_mode("hang")
    hanging = netd_node.plugin_dir / "hanging"
    hanging.unlink(missing_ok=True)
    leases_before = netd_node.leases()
    req = pod_request()
    call = asyncio.ensure_future(netd.create_pod_network(req, timeout=30))
    try:
        deadline = time.monotonic() + 20
        while not hanging.exists():
            assert time.monotonic() < deadline, "the fake plugin was never reached"
            assert not call.done(), call
            await asyncio.sleep(0.02)
        # bridge and portmap ran: an address is held, the namespace is pinned.
        held = netd_node.leases() - leases_before
        assert len(held) == 1
        assert (netd_node.netns_dir / f"crib-{req.pod_id}").exists()
        netd_node.stack.kill("netd")  # SIGKILL mid-ADD
        with pytest.raises(CribError):
            await call
        # The conf dir changes while netd is down; recovery uses the cached list.
        front.unlink()
        netd_node.fake_mode("")
        netd_node.stack.start_one("netd")
    finally:
        front.unlink(missing_ok=True)
        netd_node.fake_mode("")
        if not call.done():
            call.cancel()
    await netd.close()
    with pytest.raises(NotFound):
        await netd.get_pod_network(req.pod_id)
    assert not held & netd_node.leases()
    assert not (netd_node.netns_dir / f"crib-{req.pod_id}").exists()
    assert not iptables.cni_lines_mentioning([req.pod_id])
    calls = (netd_node.plugin_dir / "calls").read_text()
    assert f"DEL {req.pod_id}" in calls


async def test_failed_add_is_rolled_back_with_plugin_message(netd_node: NetdNode,
                                                             netd: NetdClient) -> None:
    conf = netd_node.default_conf()
    conf["plugins"].append({"type": "crib-fake"})  # type: ignore[attr-defined]
    front = netd_node.write_conf("00-fail.conflist", conf)
    netd_node.fake_mode("fail")
    leases_before = netd_node.leases()
    req = pod_request()
    try:
        with pytest.raises(FailedPrecondition, match="crib-fake refuses: as the test asked"):
            await netd.create_pod_network(req)
    finally:
        front.unlink()
        netd_node.fake_mode("")
    assert netd_node.leases() == leases_before
    assert not (netd_node.netns_dir / f"crib-{req.pod_id}").exists()
    with pytest.raises(NotFound):
        await netd.get_pod_network(req.pod_id)
    assert not iptables.cni_lines_mentioning([req.pod_id])


def _namespace_model():  # type: ignore[no-untyped-def]
    from crib_common.models.netd import NetworkNamespace

    return NetworkNamespace


async def test_sigkill_during_del_is_finished_at_start(netd_node: NetdNode,
                                                       netd: NetdClient) -> None:
    conf = netd_node.default_conf()
    conf["plugins"].append({"type": "crib-fake"})  # type: ignore[attr-defined]
    front = netd_node.write_conf("00-hangdel.conflist", conf)
    req = pod_request()
    hanging = netd_node.plugin_dir / "hanging"
    hanging.unlink(missing_ok=True)
    try:
        net = await netd.create_pod_network(req)
        front.unlink()  # DEL must use the cached list, crib-fake included
        netd_node.fake_mode("hang-del")
        call = asyncio.ensure_future(netd.remove_pod_network(req.pod_id, timeout=30))
        deadline = time.monotonic() + 20
        while not hanging.exists():
            assert time.monotonic() < deadline and not call.done()
            await asyncio.sleep(0.02)
        assert (await netd.get_pod_network(req.pod_id)).state == "deleting"
        netd_node.stack.kill("netd")
        with pytest.raises(CribError):
            await call
        netd_node.fake_mode("")
        netd_node.stack.start_one("netd")
    finally:
        front.unlink(missing_ok=True)
        netd_node.fake_mode("")
    await netd.close()
    with pytest.raises(NotFound):
        await netd.get_pod_network(req.pod_id)
    assert net.ips[0].ip not in netd_node.leases()
    assert not Path(net.netns_path).exists()
    assert not iptables.cni_lines_mentioning([req.pod_id])
