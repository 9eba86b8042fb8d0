"""NetworkReady from netd's /healthz: false with a reason for each kind of bad config,
true again once fixed, without a restart."""

from __future__ import annotations

import shutil

import pytest

from crib_common.clients.netd import NetdClient
from crib_common.errors import FailedPrecondition
from crib_common.models.netd import CniConfigView

from .conftest import NetdNode
from .helpers import pod_request

pytestmark = pytest.mark.integration


async def test_broken_conflist(netd_node: NetdNode, netd: NetdClient) -> None:
    assert (await netd.health())["ready"] is True
    broken = netd_node.write_conf("00-broken.conflist", '{"cniVersion": "1.0.0", "name": ')
    try:
        health = await netd.health()
        assert health["ready"] is False
        assert health["reason"] == "CNIConfigInvalid"
        assert "00-broken.conflist" in health["message"]
        assert "invalid JSON" in health["message"]
        with pytest.raises(FailedPrecondition, match="CNIConfigInvalid"):
            await netd.create_pod_network(pod_request())
        view = await netd.get_model("/v1/config", CniConfigView)
        assert not view.ready and view.reason == "CNIConfigInvalid"
    finally:
        broken.unlink()
    assert (await netd.health())["ready"] is True


async def test_missing_plugin(netd_node: NetdNode, netd: NetdClient) -> None:
    conf = netd_node.write_conf("00-missing.conflist", {
        "cniVersion": "1.0.0", "name": "crib-missing",
        "plugins": [{"type": "crib-nonexistent"}],
    })
    plugin = netd_node.plugin_dir / "crib-nonexistent"
    try:
        health = await netd.health()
        assert health["ready"] is False
        assert health["reason"] == "CNIPluginMissing"
        assert "crib-nonexistent" in health["message"]
        # Fixed by installing the plugin: ready again, no restart.
        shutil.copy(netd_node.plugin_dir / "crib-fake", plugin)
        assert (await netd.health())["ready"] is True
    finally:
        conf.unlink()
        plugin.unlink(missing_ok=True)
    assert (await netd.health())["ready"] is True


async def test_no_configuration(netd_node: NetdNode, netd: NetdClient) -> None:
    conf = netd_node.conf_dir / "10-crib.conflist"
    aside = netd_node.root / "10-crib.conflist.aside"
    conf.rename(aside)
    try:
        health = await netd.health()
        assert health["ready"] is False and health["reason"] == "NoCNIConfiguration"
        assert str(netd_node.conf_dir) in health["message"]
    finally:
        aside.rename(conf)
    health = await netd.health()
    assert health["ready"] is True
    assert health["details"]["network"] == netd_node.network


async def test_config_view_and_openapi(netd_node: NetdNode, netd: NetdClient) -> None:
    view = await netd.get_model("/v1/config", CniConfigView)
    assert view.ready and view.name == netd_node.network
    assert view.plugins == ["bridge", "portmap", "loopback"]
    assert view.negotiated_version == "1.0.0"
    ipam = view.config["plugins"][0]["ipam"]
    assert ipam["dataDir"] == str(netd_node.root / "lib/netd/ipam")
    _, metrics = await netd.request_bytes("GET", "/metrics")
    assert b'crib_netd_cni_plugin_seconds_count{command="VERSION",ok="true",plugin="bridge"}' \
        in metrics
    _, body = await netd.request_bytes("GET", "/openapi.json")
    for path in ("/v1/networks", "/v1/networks/{pod_id}", "/v1/networks/{pod_id}/check",
                 "/v1/namespaces", "/v1/config", "/v1/gc"):
        assert f'"{path}"' in body.decode()
