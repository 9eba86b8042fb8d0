"""CRI Exec/Attach/PortForward: validation and the URLs they hand out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from crib_common.cri.runtime.v1 import (
    AttachRequest,
    ExecRequest,
    PortForwardRequest,
)
from crib_common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from crib_common.server import CriTable
from crib_common.settings import RuntimedSection
from runtimed.cri import container_attach, container_exec, sandbox_portforward
from runtimed.streaming import ContainerTarget, SandboxTarget, StreamServer

FULL_ID = "a" * 64


class Targets:
    async def container_target(self, container_id: str) -> ContainerTarget:
        if not FULL_ID.startswith(container_id):
            raise NotFound(f"container {container_id} not found")
        return ContainerTarget(id=FULL_ID, running=True, runtime_path="/usr/sbin/runc",
                               runtime_root=Path("/run/x"), tty=False,
                               attach_socket=Path("/run/x/attach"))

    async def sandbox_target(self, sandbox_id: str) -> SandboxTarget:
        if sandbox_id == "stopped":
            return SandboxTarget(id="stopped", ready=False, netns_path=None)
        if sandbox_id != "pod":
            raise NotFound(f"pod sandbox {sandbox_id} not found")
        return SandboxTarget(id="pod", ready=True, netns_path=None)

    async def container_exit_code(self, container_id: str, timeout: float) -> int | None:
        return None


@pytest.fixture
async def table() -> AsyncIterator[tuple[CriTable, StreamServer]]:
    server = StreamServer(RuntimedSection(), Targets())
    t = CriTable()
    container_exec.register(t, server)
    container_attach.register(t, server)
    sandbox_portforward.register(t, server)
    await server.start()
    try:
        yield t, server
    finally:
        await server.stop()


async def _call(t: CriTable, method: str, request: Any) -> Any:
    return await t.methods[f"/runtime.v1.RuntimeService/{method}"].handler(request)


async def test_exec_returns_one_time_url_for_full_id(
        table: tuple[CriTable, StreamServer]) -> None:
    t, server = table
    reply = await _call(t, "Exec", ExecRequest(container_id="aaaa", cmd=["ls"], stdout=True))
    assert reply.url.startswith(server.base_url + "/exec/")
    token = reply.url.rsplit("/", 1)[1]
    spec = server._cache.consume(token)
    assert spec is not None and spec.container_id == FULL_ID and spec.cmd == ("ls",)


@pytest.mark.parametrize("request_,error", [
    (ExecRequest(cmd=["ls"], stdout=True), InvalidArgument),
    (ExecRequest(container_id="aaaa", stdout=True), InvalidArgument),
    (ExecRequest(container_id="aaaa", cmd=["ls"]), InvalidArgument),
    (ExecRequest(container_id="aaaa", cmd=["ls"], tty=True, stderr=True), InvalidArgument),
    (ExecRequest(container_id="bbbb", cmd=["ls"], stdout=True), NotFound),
])
async def test_exec_rejects(table: tuple[CriTable, StreamServer], request_: ExecRequest,
                            error: type[Exception]) -> None:
    with pytest.raises(error):
        await _call(table[0], "Exec", request_)


async def test_attach(table: tuple[CriTable, StreamServer]) -> None:
    t, server = table
    reply = await _call(t, "Attach", AttachRequest(container_id=FULL_ID, stdout=True,
                                                   stdin=True))
    assert reply.url.startswith(server.base_url + "/attach/")
    spec = server._cache.consume(reply.url.rsplit("/", 1)[1])
    assert spec is not None and spec.stdin is False  # the container has no stdin
    with pytest.raises(InvalidArgument):  # tty must match the container's
        await _call(t, "Attach", AttachRequest(container_id=FULL_ID, stdout=True, tty=True))
    with pytest.raises(InvalidArgument):
        await _call(t, "Attach", AttachRequest(container_id=FULL_ID))


async def test_port_forward(table: tuple[CriTable, StreamServer]) -> None:
    t, server = table
    reply = await _call(t, "PortForward", PortForwardRequest(pod_sandbox_id="pod", port=[80]))
    assert reply.url.startswith(server.base_url + "/portforward/")
    with pytest.raises(NotFound):
        await _call(t, "PortForward", PortForwardRequest(pod_sandbox_id="nope"))
    with pytest.raises(FailedPrecondition):
        await _call(t, "PortForward", PortForwardRequest(pod_sandbox_id="stopped"))
    with pytest.raises(InvalidArgument):
        await _call(t, "PortForward", PortForwardRequest(pod_sandbox_id="pod", port=[0]))


async def test_without_targets_unavailable() -> None:
    server = StreamServer(RuntimedSection())
    t = CriTable()
    container_exec.register(t, server)
    with pytest.raises(Unavailable):
        await _call(t, "Exec", ExecRequest(container_id="x", cmd=["ls"], stdout=True))
