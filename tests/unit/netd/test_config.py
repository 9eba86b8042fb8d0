"""Finding, parsing and validating CNI configuration; crib's default network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crib_common.settings import NetdSection
from netd.cni.config import (
    ConfigProblem,
    default_conflist,
    install_default,
    load_active,
    parse_network_config,
    select_version,
)

PLUGINS = Path("/usr/lib/cni")


def _plugin_dir(tmp_path: Path, *names: str) -> Path:
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    for name in names:
        (d / name).write_text("#!/bin/sh\n")
        (d / name).chmod(0o755)
    return d


def test_conflist_parsed() -> None:
    cfg = parse_network_config(json.dumps({
        "cniVersion": "1.0.0", "name": "net1", "disableCheck": True,
        "plugins": [{"type": "bridge", "ipam": {"type": "host-local"}}, {"type": "portmap"}],
    }))
    assert cfg.name == "net1" and cfg.cni_version == "1.0.0"
    assert [p["type"] for p in cfg.plugins] == ["bridge", "portmap"]
    assert cfg.disable_check and not cfg.disable_gc


def test_single_plugin_conf_is_wrapped() -> None:
    cfg = parse_network_config(json.dumps({
        "cniVersion": "0.4.0", "name": "single", "type": "bridge", "bridge": "x0",
    }))
    assert cfg.plugins == ({"type": "bridge", "bridge": "x0"},)
    assert cfg.raw["name"] == "single" and cfg.cni_version == "0.4.0"


@pytest.mark.parametrize("doc, needle", [
    ("{nope", "invalid JSON"),
    ("[]", "must be a JSON object"),
    ('{"cniVersion": "1.0.0", "name": "-bad", "plugins": [{"type": "x"}]}', "network \"name\""),
    ('{"cniVersion": "1.0.0", "name": "n", "plugins": []}', "non-empty list"),
    ('{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../x"}]}', "bad \"type\""),
    ('{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "b", "ipam": {}}]}', "ipam"),
    ('{"cniVersion": "1.0.0", "name": "n"}', "neither"),
])
def test_invalid_configs_name_the_problem(doc: str, needle: str) -> None:
    with pytest.raises(ConfigProblem) as info:
        parse_network_config(doc, "/etc/cni/net.d/x.conflist")
    assert info.value.reason == "CNIConfigInvalid"
    assert needle in info.value.message and "x.conflist" in info.value.message


def test_first_file_in_lexical_order_wins_and_is_not_skipped_when_broken(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    bins = _plugin_dir(tmp_path, "bridge", "host-local", "loopback")
    (conf / "20-b.conf").write_text(json.dumps({"cniVersion": "1.0.0", "name": "b",
                                                 "type": "loopback"}))
    (conf / "10-a.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "a",
        "plugins": [{"type": "bridge", "ipam": {"type": "host-local"}}]}))
    (conf / "00-ignored.txt").write_text("not a config")
    assert load_active(conf, [bins]).name == "a"
    (conf / "05-broken.json").write_text("{")
    with pytest.raises(ConfigProblem) as info:
        load_active(conf, [bins])
    assert info.value.reason == "CNIConfigInvalid" and "05-broken.json" in info.value.message


def test_missing_plugin_and_missing_ipam(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    bins = _plugin_dir(tmp_path, "bridge")
    (conf / "10.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "a",
        "plugins": [{"type": "bridge", "ipam": {"type": "crib-ipam"}}]}))
    with pytest.raises(ConfigProblem) as info:
        load_active(conf, [tmp_path / "nothing", bins])
    assert info.value.reason == "CNIPluginMissing" and "'crib-ipam'" in info.value.message
    with pytest.raises(ConfigProblem) as info:
        load_active(tmp_path / "absent", [bins])
    assert info.value.reason == "NoCNIConfiguration"


def test_default_network_installed_once(tmp_path: Path) -> None:
    settings = NetdSection(root=tmp_path / "root", conf_dir=tmp_path / "conf",
                           default_bridge="cribu1", default_subnet="10.99.0.0/24",
                           default_subnet6="fd00:99::/64")
    written = install_default(settings)
    assert written == tmp_path / "conf/10-crib.conflist"
    cfg = load_active(settings.conf_dir, [PLUGINS]) if PLUGINS.is_dir() else \
        parse_network_config(written.read_bytes())
    assert cfg.name == "crib-cribu1"
    bridge = cfg.plugins[0]
    assert bridge["bridge"] == "cribu1" and bridge["isGateway"]
    assert bridge["ipam"]["dataDir"] == str(tmp_path / "root/ipam")
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.99.0.0/24"}],
                                        [{"subnet": "fd00:99::/64"}]]
    assert [p["type"] for p in cfg.plugins] == ["bridge", "portmap", "loopback"]
    assert cfg.plugins[1]["capabilities"] == {"portMappings": True}
    assert install_default(settings) is None  # there is a configuration now
    assert default_conflist(NetdSection())["name"] == "crib"


def test_settings_reject_bad_bridge_and_subnet() -> None:
    with pytest.raises(ValueError):
        NetdSection(default_bridge="a-very-long-bridge-name")
    with pytest.raises(ValueError):
        NetdSection(default_subnet="10.0.0.300/24")


def test_version_selection() -> None:
    assert select_version("0.4.0", ["1.0.0", "0.3.1"]) == "1.0.0"
    assert select_version("1.0.0", ["9.0.0"]) == "1.0.0"  # beyond what crib speaks
    assert select_version("0.3.1", None) == "0.3.1"
