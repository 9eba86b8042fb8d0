"""Chain execution against a fake `PluginExec`: order, prevResult, runtimeConfig, versions."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from netd.cni.chain import Attachment, ChainRunner, parse_ips
from netd.cni.config import parse_network_config
from netd.cni.invoke import CniPluginError, Invocation

CONF = {
    "cniVersion": "1.0.0", "cniVersions": ["0.4.0", "1.0.0", "1.1.0"], "name": "unit",
    "plugins": [
        {"type": "bridge", "bridge": "x0", "cni.dev/secret": 1,
         "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}},
        {"type": "tuning", "capabilities": {"mac": True, "portMappings": False}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


class FakeExec:
    """Records calls; each ADD appends its plugin name to the result's `chain`."""

    def __init__(self, versions: dict[str, list[str]] | None = None,
                 fail: dict[tuple[str, str], CniPluginError] | None = None) -> None:
        self.calls: list[tuple[str, Invocation, dict[str, Any]]] = []
        self.versions = versions or {}
        self.fail = fail or {}

    async def run(self, binary: Path, invocation: Invocation, stdin: dict[str, Any],
                  timeout: float) -> dict[str, Any] | None:
        self.calls.append((binary.name, invocation, copy.deepcopy(stdin)))
        if (binary.name, invocation.command) in self.fail:
            raise self.fail[(binary.name, invocation.command)]
        if invocation.command == "VERSION":
            return {"cniVersion": "1.0.0",
                    "supportedVersions": self.versions.get(binary.name, ["0.4.0", "1.0.0"])}
        if invocation.command == "ADD":
            prev = stdin.get("prevResult") or {"cniVersion": stdin["cniVersion"], "chain": [],
                                               "ips": [{"address": "10.1.0.5/24",
                                                        "interface": 1}],
                                               "interfaces": [{"name": "veth"},
                                                              {"name": "eth0",
                                                               "sandbox": "/ns"}]}
            return {**prev, "chain": [*prev["chain"], binary.name]}
        return None

    def of(self, command: str) -> list[tuple[str, dict[str, Any]]]:
        return [(name, stdin) for name, inv, stdin in self.calls if inv.command == command]


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    for name in ("bridge", "tuning", "portmap", "host-local"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    return tmp_path


def _att() -> Attachment:
    return Attachment("pod1", "/ns", "eth0", [("IgnoreUnknown", "1"), ("K8S_POD_NAME", "p")],
                      {"portMappings": [{"hostPort": 80, "containerPort": 8080,
                                         "protocol": "tcp"}], "mac": "c2:00:00:00:00:01",
                       "bandwidth": {"ingressRate": 1}})


async def test_add_chains_prev_result_and_derives_runtime_config(plugin_dir: Path) -> None:
    fake = FakeExec()
    runner = ChainRunner(fake, [plugin_dir], 5)
    result = await runner.add(parse_network_config(json.dumps(CONF)), _att())
    assert result["chain"] == ["bridge", "tuning", "portmap"]
    adds = fake.of("ADD")
    assert [name for name, _ in adds] == ["bridge", "tuning", "portmap"]
    bridge, tuning, portmap = (stdin for _, stdin in adds)
    # Negotiated: 1.1.0 is offered but the plugins only speak up to 1.0.0.
    assert {s["cniVersion"] for s in (bridge, tuning, portmap)} == {"1.0.0"}
    assert all(s["name"] == "unit" for s in (bridge, tuning, portmap))
    assert "prevResult" not in bridge  # SPEC: not set for the first ADD of a chain
    assert tuning["prevResult"]["chain"] == ["bridge"]
    assert portmap["prevResult"]["chain"] == ["bridge", "tuning"]
    assert "capabilities" not in tuning and "runtimeConfig" not in bridge
    assert "cni.dev/secret" not in bridge
    # Only declared-and-enabled capabilities the runtime provides.
    assert tuning["runtimeConfig"] == {"mac": "c2:00:00:00:00:01"}
    assert portmap["runtimeConfig"] == {"portMappings": [
        {"hostPort": 80, "containerPort": 8080, "protocol": "tcp"}]}
    inv = fake.calls[-1][1]
    env = inv.environ()
    assert env["CNI_COMMAND"] == "ADD" and env["CNI_CONTAINERID"] == "pod1"
    assert env["CNI_NETNS"] == "/ns" and env["CNI_IFNAME"] == "eth0"
    assert env["CNI_ARGS"] == "IgnoreUnknown=1;K8S_POD_NAME=p"
    assert env["CNI_PATH"] == str(plugin_dir)


async def test_del_reverse_with_final_result_and_check_in_order(plugin_dir: Path) -> None:
    fake = FakeExec()
    runner = ChainRunner(fake, [plugin_dir], 5)
    cfg = parse_network_config(json.dumps(CONF))
    final = {"cniVersion": "1.0.0", "chain": ["all"]}
    await runner.delete(cfg, _att(), final)
    dels = fake.of("DEL")
    assert [n for n, _ in dels] == ["portmap", "tuning", "bridge"]
    assert all(s["prevResult"] == final for _, s in dels)
    await runner.check(cfg, _att(), final)
    assert [n for n, _ in fake.of("CHECK")] == ["bridge", "tuning", "portmap"]
    # Without a cached result (a half-done ADD), DEL still runs, without prevResult.
    fake.calls.clear()
    await runner.delete(cfg, _att(), None)
    assert all("prevResult" not in s for _, s in fake.of("DEL"))


async def test_check_skipped_when_disabled_or_old(plugin_dir: Path) -> None:
    fake = FakeExec()
    runner = ChainRunner(fake, [plugin_dir], 5)
    disabled = parse_network_config(json.dumps({**CONF, "disableCheck": True}))
    await runner.check(disabled, _att(), {})
    old = parse_network_config(json.dumps(
        {**CONF, "cniVersion": "0.3.1", "cniVersions": None}))
    await runner.check(old, _att(), {})
    await runner.delete(old, _att(), {"x": 1})
    assert fake.of("CHECK") == []
    assert all("prevResult" not in s for _, s in fake.of("DEL"))  # 0.3.1: no prevResult


async def test_add_stops_at_first_error_and_missing_binary_is_error(plugin_dir: Path) -> None:
    err = CniPluginError("tuning", "ADD", 7, "bad sysctl")
    fake = FakeExec(fail={("tuning", "ADD"): err})
    runner = ChainRunner(fake, [plugin_dir], 5)
    cfg = parse_network_config(json.dumps(CONF))
    with pytest.raises(CniPluginError, match="bad sysctl"):
        await runner.add(cfg, _att())
    assert [n for n, _ in fake.of("ADD")] == ["bridge", "tuning"]
    (plugin_dir / "portmap").unlink()
    with pytest.raises(CniPluginError, match="not found"):
        await ChainRunner(FakeExec(), [plugin_dir], 5).delete(cfg, _att(), None)


async def test_status_and_gc_only_for_cni_1_1_plugins(plugin_dir: Path) -> None:
    cfg = parse_network_config(json.dumps(CONF))
    old = FakeExec()
    runner = ChainRunner(old, [plugin_dir], 5)
    await runner.status(cfg)
    assert await runner.gc(cfg, [("pod1", "eth0")]) == []
    assert old.of("STATUS") == [] and old.of("GC") == []
    new = FakeExec(versions={n: ["1.0.0", "1.1.0"] for n in ("bridge", "tuning", "portmap")},
                   fail={("tuning", "GC"): CniPluginError("tuning", "GC", 0, "oops")})
    runner = ChainRunner(new, [plugin_dir], 5)
    await runner.status(cfg)
    assert [n for n, _ in new.of("STATUS")] == ["bridge", "tuning", "portmap"]
    errors = await runner.gc(cfg, [("pod1", "eth0")])
    # GC goes on past an error and reports it.
    assert [n for n, _ in new.of("GC")] == ["bridge", "tuning", "portmap"]
    assert len(errors) == 1 and "oops" in errors[0]
    assert new.of("GC")[0][1]["cni.dev/valid-attachments"] == [
        {"containerID": "pod1", "ifname": "eth0"}]
    assert new.of("GC")[0][1]["cniVersion"] == "1.1.0"


async def test_portmap_ipv6_check_bug_tolerated_only_without_ipv6(plugin_dir: Path) -> None:
    bug = CniPluginError("portmap", "CHECK", 999, "could not check ipv6 dnat: chain x not found")
    runner = ChainRunner(FakeExec(fail={("portmap", "CHECK"): bug}), [plugin_dir], 5)
    cfg = parse_network_config(json.dumps(CONF))
    v4 = {"ips": [{"address": "10.1.0.5/24"}]}
    await runner.check(cfg, _att(), v4)
    with pytest.raises(CniPluginError):
        await runner.check(cfg, _att(), {"ips": [{"address": "fd00::5/64"}]})


async def test_del_tolerates_a_masquerade_chain_already_gone(plugin_dir: Path) -> None:
    # Debian's bridge 1.1.1 fails DEL when its nat chain was flushed behind its back.
    gone = CniPluginError("bridge", "DEL", 999, 'running [/usr/sbin/iptables -t nat -D '
                          'POSTROUTING -s 10.1.0.5 -j CNI-abc --wait]: exit status 2: '
                          "iptables v1.8.9 (nf_tables): Chain 'CNI-abc' does not exist")
    fake = FakeExec(fail={("bridge", "DEL"): gone})
    runner = ChainRunner(fake, [plugin_dir], 5)
    cfg = parse_network_config(json.dumps(CONF))
    await runner.delete(cfg, _att(), {"ips": [{"address": "10.1.0.5/24"}]})
    assert [name for name, _ in fake.of("DEL")] == ["portmap", "tuning", "bridge"]
    # Any other DEL failure still fails the DEL.
    other = CniPluginError("bridge", "DEL", 999, "failed to delete veth: device busy")
    runner = ChainRunner(FakeExec(fail={("bridge", "DEL"): other}), [plugin_dir], 5)
    with pytest.raises(CniPluginError, match="device busy"):
        await runner.delete(cfg, _att(), {"ips": [{"address": "10.1.0.5/24"}]})


def test_parse_ips() -> None:
    result = {
        "interfaces": [{"name": "crib0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/n"}],
        "ips": [{"address": "10.1.0.1/24", "interface": 0},  # host side: not the pod's
                {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
                {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2}],
    }
    assert parse_ips(result, "eth0") == [("10.1.0.5", 4, "eth0", "10.1.0.1"),
                                         ("fd00::5", 6, "eth0", "fd00::1")]
    assert parse_ips({"ip4": {"ip": "10.2.0.3/16", "gateway": "10.2.0.1"}}, "eth0") == [
        ("10.2.0.3", 4, "eth0", "10.2.0.1")]
    assert parse_ips({}, "eth0") == []
