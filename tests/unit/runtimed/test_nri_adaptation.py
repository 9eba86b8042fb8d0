"""`Nri` on a socket of the test's own with the test plugin (tests/support/nri_plugin.py)
and a stand-in for the node's records: ordering by index, StopContainer once and before
RemoveContainer, the synchronisation gate, a hanging plugin dropped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from crib_common.errors import FailedPrecondition
from crib_common.settings import NriSection
from runtimed.nri import Nri
from runtimed.store.records import ContainerMeta, ContainerRecord, SandboxMeta, SandboxRecord
from tests.support.nri_plugin import NodeStub, PluginFailure, TestPlugin, mask


def _pod(pid: str = "p1") -> SandboxRecord:
    rec = SandboxRecord(meta=SandboxMeta(id=pid, name=pid, namespace="n", uid="u",
                                         handler="runc", created_at=1))
    rec.status.state = "ready"
    return rec


def _ctr(cid: str, state: str = "running") -> ContainerRecord:
    rec = ContainerRecord(meta=ContainerMeta(id=cid, pod_id="p1", name=cid, handler="runc",
                                             image="i", bundle="/nonexistent", created_at=1))
    rec.status.state = state  # type: ignore[assignment]
    return rec


@pytest.fixture
async def nri(tmp_path: Path) -> AsyncIterator[Nri]:
    cfg = NriSection(socket=tmp_path / "nri.sock", plugin_dir=tmp_path / "none",
                     request_timeout=0.5, registration_timeout=1.0)
    service = Nri(NodeStub(), cfg)  # type: ignore[arg-type]
    await service.start()
    try:
        yield service
    finally:
        await service.close()


async def _plugin(nri: Nri, name: str, index: str, log: list[Any], events: int,
                  **kw: Any) -> TestPlugin:
    plugin = TestPlugin(nri.cfg.socket, name, index, events, log, **kw)
    await plugin.connect()
    for _ in range(100):
        if any(p.id == f"{index}-{name}" for p in nri.plugins):
            return plugin
        await asyncio.sleep(0.01)
    raise AssertionError(f"{index}-{name} never synchronised")


async def test_events_in_index_order_and_stop_once_before_remove(nri: Nri) -> None:
    log: list[Any] = []
    events = mask("RunPodSandbox", "StopContainer", "RemoveContainer")
    # Kept referenced: the loop holds a plugin's tasks only weakly.
    plugins = [await _plugin(nri, "late", "20", log, events),
               await _plugin(nri, "early", "03", log, events)]
    pod, ctr = _pod(), _ctr("c1", "exited")
    nri.node.sandboxes[pod.meta.id] = pod
    await nri.run_pod_sandbox(pod)
    nri.container_exited(ctr)             # its StopContainer taken at once...
    stopping = asyncio.ensure_future(nri.stop_container(pod, ctr))  # (sends nothing)
    await nri.remove_container(pod, ctr)  # ...so the remove waits for it
    await stopping
    assert [(p, m) for p, m, _ in log if m not in ("Configure", "Synchronize")] == [
        ("early", "RunPodSandbox"), ("late", "RunPodSandbox"),
        ("early", "StopContainer"), ("late", "StopContainer"),
        ("early", "RemoveContainer"), ("late", "RemoveContainer")]
    assert len(plugins) == 2


async def test_error_fails_the_call_and_names_the_plugin(nri: Nri) -> None:
    def refuse(_req: Any) -> None:
        raise PluginFailure("no room")

    plugin = await _plugin(nri, "strict", "10", [], mask("RunPodSandbox"),
                           replies={"RunPodSandbox": refuse})
    with pytest.raises(FailedPrecondition, match="10-strict failed RunPodSandbox: no room"):
        await nri.run_pod_sandbox(_pod())
    assert [p.id for p in nri.plugins] == ["10-strict"]  # an error does not drop it
    assert not plugin.closed.is_set()


async def test_hanging_plugin_dropped_and_event_done(nri: Nri) -> None:
    async def hang(_req: Any) -> None:
        await asyncio.sleep(30)

    plugin = await _plugin(nri, "hang", "10", [], mask("RunPodSandbox"),
                           replies={"RunPodSandbox": hang})
    loop = asyncio.get_running_loop()
    began = loop.time()
    await nri.run_pod_sandbox(_pod())
    assert 0.4 < loop.time() - began < 2
    assert nri.plugins == []
    await asyncio.wait_for(plugin.closed.wait(), 2)  # runtimed closed its connection


async def test_creates_wait_for_a_synchronisation(nri: Nri) -> None:
    log: list[Any] = []
    plugin = TestPlugin(nri.cfg.socket, "slow", "10", mask("RunPodSandbox"), log,
                        sync_delay=0.3)
    order: list[str] = []

    async def create() -> None:
        async with nri.block_sync():
            order.append("create")

    await plugin.connect()
    while not any(m == "Synchronize" for _p, m, _r in log):
        await asyncio.sleep(0.01)
    await create()  # waits until the plugin is synchronised
    order.append("after")
    assert [p.id for p in nri.plugins] == ["10-slow"]
    assert order == ["create", "after"]
    # And a synchronisation waits for a create in flight.
    entered = asyncio.Event()
    leave = asyncio.Event()

    async def long_create() -> None:
        async with nri.block_sync():
            entered.set()
            await leave.wait()

    task = asyncio.ensure_future(long_create())
    await entered.wait()
    second = TestPlugin(nri.cfg.socket, "next", "11", mask("RunPodSandbox"), log)
    await second.connect()
    await asyncio.sleep(0.2)
    assert [p for p, m, _ in log if m == "Synchronize"] == ["slow"]
    leave.set()
    await task
    for _ in range(100):
        if len(nri.plugins) == 2:
            break
        await asyncio.sleep(0.01)
    assert [p.id for p in nri.plugins] == ["10-slow", "11-next"]
