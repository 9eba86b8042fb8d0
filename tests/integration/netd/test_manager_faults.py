"""`NetworkManager` edge cases with a fake plugin executor (real namespaces, no plugins):
serialisation per pod, a DEL that fails, a caller that goes away, recovery at start."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from crib_common.errors import Internal
from crib_common.models.netd import PodNetworkCreate
from crib_common.settings import NetdSection
from netd.cni.invoke import CniPluginError, Invocation
from netd.manager import NetworkManager
from netd.netns import is_pinned_netns

pytestmark = pytest.mark.integration


class FakeExec:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.add_delay = 0.0
        self.fail_del = False
        self.next_ip = 2

    async def run(self, binary: Path, invocation: Invocation, stdin: dict[str, Any],
                  timeout: float) -> dict[str, Any] | None:
        self.calls.append((binary.name, invocation.command, invocation.container_id))
        if invocation.command == "VERSION":
            return {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}
        if invocation.command == "ADD":
            await asyncio.sleep(self.add_delay)
            ip = f"10.77.0.{self.next_ip}"
            self.next_ip += 1
            return {"cniVersion": "1.0.0",
                    "interfaces": [{"name": "eth0", "sandbox": invocation.netns}],
                    "ips": [{"address": f"{ip}/24", "interface": 0}]}
        if invocation.command == "DEL" and self.fail_del:
            raise CniPluginError(binary.name, "DEL", 11, "try later")
        return None

    def count(self, command: str, pod_id: str) -> int:
        return sum(1 for _, c, p in self.calls if c == command and p == pod_id)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[NetdSection, FakeExec]]:
    bins = tmp_path / "bin"
    bins.mkdir()
    (bins / "crib-x").write_text("#!/bin/sh\n")
    (bins / "crib-x").chmod(0o755)
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "10.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "fake", "plugins": [{"type": "crib-x"}]}))
    settings = NetdSection(root=tmp_path / "root", conf_dir=conf, plugin_dirs=[bins],
                           netns_dir=tmp_path / "netns", install_default_config=False)
    try:
        yield settings, FakeExec()
    finally:
        for pin in (tmp_path / "netns").glob("*"):
            subprocess.run(["umount", "-l", str(pin)], capture_output=True)
        subprocess.run(["umount", "-l", str(tmp_path / "netns")], capture_output=True)


def _req() -> PodNetworkCreate:
    return PodNetworkCreate(pod_id=uuid.uuid4().hex, pod_name="p", pod_namespace="n")


async def test_concurrent_creates_of_one_pod_add_once(env: tuple[NetdSection, FakeExec]) -> None:
    settings, fake = env
    fake.add_delay = 0.1
    mgr = NetworkManager(settings, fake)
    await mgr.start()
    req = _req()
    results = await asyncio.gather(*(mgr.create(req) for _ in range(5)))
    assert len({r.ips[0].ip for r in results}) == 1
    assert fake.count("ADD", req.pod_id) == 1
    assert is_pinned_netns(Path(results[0].netns_path))
    await asyncio.gather(*(mgr.remove(req.pod_id) for _ in range(3)))
    assert fake.count("DEL", req.pod_id) == 1
    assert not Path(results[0].netns_path).exists()
    assert not mgr._locks
    await mgr.close()


async def test_failed_del_is_kept_and_retried(env: tuple[NetdSection, FakeExec]) -> None:
    settings, fake = env
    mgr = NetworkManager(settings, fake)
    await mgr.start()
    req = _req()
    net = await mgr.create(req)
    fake.fail_del = True
    with pytest.raises(Exception, match="try later"):
        await mgr.remove(req.pod_id)
    assert mgr.get(req.pod_id).state == "deleting"
    assert is_pinned_netns(Path(net.netns_path))  # kept so the retry can still DEL in it
    fake.fail_del = False
    await mgr.remove(req.pod_id)
    assert not mgr.list_networks() and not Path(net.netns_path).exists()
    await mgr.close()


async def test_cancelled_caller_does_not_stop_the_create(
        env: tuple[NetdSection, FakeExec]) -> None:
    settings, fake = env
    fake.add_delay = 0.3
    mgr = NetworkManager(settings, fake)
    await mgr.start()
    req = _req()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await mgr.create(req)
    # The kubelet's retry finds the finished attachment instead of making a twin.
    again = await mgr.create(req)
    assert again.state == "ready" and fake.count("ADD", req.pod_id) == 1
    await mgr.remove(req.pod_id)
    await mgr.close()


async def test_start_rolls_back_creating_and_removes_orphans(
        env: tuple[NetdSection, FakeExec]) -> None:
    settings, fake = env
    mgr = NetworkManager(settings, fake)
    await mgr.start()
    keep, half = _req(), _req()
    kept = await mgr.create(keep)
    net = await mgr.create(half)
    # Turn one record back into a half-done ADD, as a kill -9 before "ready" leaves it.
    record = mgr.store.get(half.pod_id)
    assert record is not None
    record.state = "creating"
    await mgr.store.put(record)
    orphan = await mgr.namespaces.create("orphan1")
    await mgr.close()

    again = NetworkManager(settings, fake)
    await again.start()
    assert [n.pod_id for n in again.list_networks()] == [keep.pod_id]
    assert fake.count("DEL", half.pod_id) == 1
    assert not Path(net.netns_path).exists() and not orphan.exists()
    assert is_pinned_netns(Path(kept.netns_path))
    await again.remove(keep.pod_id)
    await again.close()


async def test_netns_error_is_internal_and_rolled_back(
        env: tuple[NetdSection, FakeExec], monkeypatch: pytest.MonkeyPatch) -> None:
    settings, fake = env
    mgr = NetworkManager(settings, fake)
    await mgr.start()

    async def broken(pod_id: str, userns: str = "") -> Path:
        from netd.netns import NetnsError

        raise NetnsError(28, "bind-mounting: No space left on device")

    monkeypatch.setattr(mgr.namespaces, "create", broken)
    req = _req()
    with pytest.raises(Internal, match="No space left"):
        await mgr.create(req)
    assert not mgr.list_networks()
    assert fake.count("DEL", req.pod_id) == 1  # DEL even though ADD never ran (SPEC)
    await mgr.close()


async def test_orphan_plugins_are_waited_for_then_killed(tmp_path: Path) -> None:
    import os
    import sys

    from netd.orphans import plugin_pids, wait_for_plugins

    pod_id = uuid.uuid4().hex
    netns = str(tmp_path / f"crib-{pod_id}")
    env = {**os.environ, "CNI_CONTAINERID": pod_id, "CNI_NETNS": netns, "CNI_COMMAND": "ADD"}
    quick = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"], env=env)
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             env={**env, "CNI_NETNS": "/elsewhere"})
    try:
        await asyncio.sleep(0.1)
        assert sorted(plugin_pids(pod_id, netns)) == sorted([quick.pid, stuck.pid])
        killed = await wait_for_plugins(pod_id, netns, 1.0)
        assert killed == [stuck.pid]
        assert stuck.wait(timeout=5) == -9 and quick.wait(timeout=5) == 0
        assert other.poll() is None  # someone else's attachment: left alone
    finally:
        for proc in (quick, stuck, other):
            proc.kill()
            proc.wait()


async def test_gc_at_start_with_cni_1_1_plugins(env: tuple[NetdSection, FakeExec]) -> None:
    settings, fake = env
    (settings.conf_dir / "10.conflist").write_text(json.dumps(
        {"cniVersion": "1.1.0", "name": "fake", "plugins": [{"type": "crib-x"}]}))
    seen: list[dict[str, Any]] = []
    original = fake.run

    async def run(binary: Path, inv: Invocation, stdin: dict[str, Any],
                  timeout: float) -> dict[str, Any] | None:
        if inv.command == "VERSION":
            return {"cniVersion": "1.1.0", "supportedVersions": ["1.0.0", "1.1.0"]}
        if inv.command in ("GC", "STATUS"):
            seen.append({"command": inv.command, **stdin})
            return None
        return await original(binary, inv, stdin, timeout)

    fake.run = run  # type: ignore[method-assign]
    mgr = NetworkManager(settings, fake)
    await mgr.start()
    req = _req()
    await mgr.create(req)
    assert (await mgr.health()).ready
    await mgr.close()
    seen.clear()
    again = NetworkManager(settings, fake)
    await again.start()
    gc = [s for s in seen if s["command"] == "GC"]
    assert len(gc) == 1 and gc[0]["cniVersion"] == "1.1.0"
    assert gc[0]["cni.dev/valid-attachments"] == [{"containerID": req.pod_id, "ifname": "eth0"}]
    assert (await again.health()).ready
    assert [s["command"] for s in seen[1:]] == ["STATUS"]  # health runs STATUS on 1.1
    await again.remove(req.pod_id)
    await again.close()
