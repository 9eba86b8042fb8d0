"""Attach through the streaming server to conmon-monitored runc containers."""

from __future__ import annotations

import asyncio

import pytest

from runtimed.streaming import AttachSpec, StreamServer
from tests.integration.streaming.nodes import FakeTargets, Node
from tests.support.streamclient import open_stdio

pytestmark = pytest.mark.integration

SCRIPT = ('while read l; do [ "$l" = quit ] && exit 4; echo "got $l"; echo "err $l" >&2; '
          'done')


@pytest.mark.parametrize("transport", ["spdy", "ws"])
async def test_attach_pipes_detach_and_exit_code(node: Node,
                                                 server: tuple[StreamServer, FakeTargets],
                                                 transport: str) -> None:
    srv, _ = server
    c = node.run_conmon(["sh", "-c", SCRIPT], tty=False)

    def url() -> str:
        return srv.url(AttachSpec(c.id, stdin=True, stdout=True, stderr=True, tty=False))

    client = await open_stdio(url(), transport, stdin=True)
    await client.write(b"one\n")
    await client.wait_output(b"got one\n")
    for _ in range(100):
        if b"err one\n" in client.stderr:
            break
        await asyncio.sleep(0.02)
    assert bytes(client.stderr) == b"err one\n"
    # Detach: the container keeps running and a second attach sees new output only.
    await client.close()
    await asyncio.sleep(0.2)
    assert node.state(c.id) == "running"
    client = await open_stdio(url(), transport, stdin=True)
    await client.write(b"two\n")
    await client.wait_output(b"got two\n")
    assert b"one" not in client.stdout
    await client.write(b"quit\n")
    result = await client.wait()
    assert result.exit_code == 4
    assert node.state(c.id) == "stopped"
    assert srv.active_sessions == 0


@pytest.mark.parametrize("transport", ["spdy", "ws"])
async def test_attach_tty_resize(node: Node, server: tuple[StreamServer, FakeTargets],
                                 transport: str) -> None:
    srv, _ = server
    c = node.run_conmon(["sh"], tty=True)
    client = await open_stdio(
        srv.url(AttachSpec(c.id, stdin=True, stdout=True, stderr=False, tty=True)),
        transport, stdin=True, stderr=False, tty=True)
    await client.resize(120, 40)
    await asyncio.sleep(0.3)
    await client.write(b"stty size\n")
    await client.wait_output(b"40 120")
    await client.close()
    await asyncio.sleep(0.2)
    assert node.state(c.id) == "running"
    client = await open_stdio(
        srv.url(AttachSpec(c.id, stdin=True, stdout=True, stderr=False, tty=True)),
        transport, stdin=True, stderr=False, tty=True)
    await client.write(b"exit 0\n")
    result = await client.wait()
    assert result.exit_code == 0
    assert result.status == {"metadata": {}, "status": "Success"}
