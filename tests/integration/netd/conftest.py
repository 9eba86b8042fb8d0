"""A netd-only crib stack for the netd integration tests, with a fake plugin beside the
real ones, torn down to nothing: namespaces, bridge, iptables chains, leases."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from crib_common.clients.netd import NetdClient
from tests.support.stack import Stack

from tests.support import iptables

# A CNI plugin for fault injection: its behaviour comes from the file `mode` beside it
# ("hang": ADD waits until the caller dies; "hang-del": DEL does; "fail": ADD prints the
# spec's error object, code 7; otherwise ADD passes prevResult through). Every command is appended to `calls`.
FAKE_PLUGIN = f"""#!{sys.executable}
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
cmd = os.environ.get("CNI_COMMAND", "")
conf = json.loads(sys.stdin.read() or "{{}}")
with open(os.path.join(here, "calls"), "a") as fh:
    fh.write(cmd + " " + os.environ.get("CNI_CONTAINERID", "") + "\\n")
if cmd == "VERSION":
    print(json.dumps({{"cniVersion": conf.get("cniVersion", "1.0.0"),
                      "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]}}))
    sys.exit(0)
try:
    mode = open(os.path.join(here, "mode")).read().strip()
except FileNotFoundError:
    mode = ""
if cmd == "DEL" and mode == "hang-del":
    parent = os.getppid()
    open(os.path.join(here, "hanging"), "w").close()
    while os.getppid() == parent:
        time.sleep(0.05)
    sys.exit(1)
if cmd == "ADD":
    if mode == "hang":
        parent = os.getppid()
        open(os.path.join(here, "hanging"), "w").close()
        while os.getppid() == parent:
            time.sleep(0.05)
        sys.exit(1)
    if mode == "fail":
        print(json.dumps({{"cniVersion": conf.get("cniVersion"), "code": 7,
                          "msg": "crib-fake refuses", "details": "as the test asked"}}))
        sys.exit(1)
    print(json.dumps(conf.get("prevResult") or {{"cniVersion": conf.get("cniVersion")}}))
sys.exit(0)
"""


class NetdNode:
    """The stack plus the paths the tests look at."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.root = stack.root
        self.conf_dir = stack.root / "cni"
        self.plugin_dir = stack.root / "plugins"
        self.netns_dir = stack.root / "run/netns"
        self.network = f"crib-{stack.bridge}"
        self.lease_dir = stack.root / "lib/netd/ipam" / self.network
        self.subnet_prefix = f"10.213.{stack.net_index}."

    @property
    def socket(self) -> Path:
        return self.stack.socket("netd")

    def client(self) -> NetdClient:
        return NetdClient(self.socket)

    def leases(self) -> set[str]:
        """Addresses host-local holds (its files are named after the address)."""
        if not self.lease_dir.is_dir():
            return set()
        return {p.name for p in self.lease_dir.iterdir() if p.name[0].isdigit()}

    def pins(self) -> list[Path]:
        return sorted(self.netns_dir.glob("crib-*")) if self.netns_dir.is_dir() else []

    def write_conf(self, name: str, doc: object | str) -> Path:
        path = self.conf_dir / name
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return path

    def default_conf(self) -> dict[str, object]:
        return json.loads((self.conf_dir / "10-crib.conflist").read_text())

    def fake_mode(self, mode: str) -> None:
        (self.plugin_dir / "mode").write_text(mode)

    def restart(self) -> None:
        self.stack.kill("netd")
        self.stack.start_one("netd")


@pytest.fixture(scope="module")
def netd_node() -> Iterator[NetdNode]:
    before = iptables.snapshot()
    # Tests change the plugins and conf dir while netd is down: separate processes (crib-node
    # would fork netd again at once).
    stack = Stack.create("process")
    plugin_dir = stack.root / "plugins"
    plugin_dir.mkdir()
    fake = plugin_dir / "crib-fake"
    fake.write_text(FAKE_PLUGIN)
    fake.chmod(0o755)
    stack.extra_env["CRIB_NETD__PLUGIN_DIRS"] = json.dumps(["/usr/lib/cni", str(plugin_dir)])
    node = NetdNode(stack)
    try:
        stack.start(("netd",))
        yield node
    finally:
        pins = node.pins()
        leftovers = iptables.cni_lines_mentioning([node.network, node.subnet_prefix])
        stack.cleanup()
        iptables.remove_matching([node.network, node.subnet_prefix])
        iptables.restore_new_shared(before)
        mounts = Path("/proc/self/mounts").read_text()
        assert str(stack.root) not in mounts, "mounts left behind"
        assert not os.path.exists(f"/sys/class/net/{stack.bridge}"), "bridge left behind"
        assert not pins, f"namespaces left behind: {pins}"
        assert not leftovers, f"iptables rules left behind: {leftovers}"


@pytest.fixture
async def netd(netd_node: NetdNode) -> AsyncIterator[NetdClient]:
    client = netd_node.client()
    try:
        yield client
    finally:
        await client.close()
