"""Exec through the streaming server into real runc containers, over SPDY and WebSocket."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from runtimed.streaming import ExecSpec, StreamServer
from tests.integration.streaming.nodes import FakeTargets, Node
from tests.support.streamclient import open_stdio

pytestmark = pytest.mark.integration

TRANSPORTS = ["spdy", "ws"]


@pytest.fixture(scope="module")
def sleeper(node: Node) -> str:
    return node.run(["sleep", "3600"]).id


def _exec(srv: StreamServer, cid: str, cmd: list[str], *, stdin: bool = False,
          tty: bool = False) -> str:
    return srv.url(ExecSpec(cid, tuple(cmd), stdin=stdin, stdout=True, stderr=not tty,
                            tty=tty))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_exec_stdout_stderr_and_success(server: tuple[StreamServer, FakeTargets],
                                              sleeper: str, transport: str) -> None:
    srv, _ = server
    url = _exec(srv, sleeper, ["sh", "-c", "echo out; echo err >&2"])
    client = await open_stdio(url, transport, stderr=True)
    result = await client.wait()
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"
    assert result.exit_code == 0
    assert result.status == {"metadata": {}, "status": "Success"}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_exec_exit_code_3(server: tuple[StreamServer, FakeTargets], sleeper: str,
                                transport: str) -> None:
    srv, _ = server
    client = await open_stdio(_exec(srv, sleeper, ["sh", "-c", "exit 3"]), transport)
    result = await client.wait()
    assert result.exit_code == 3
    assert result.status is not None
    assert result.status["reason"] == "NonZeroExitCode"
    assert result.status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_exec_stdin_echo(server: tuple[StreamServer, FakeTargets], sleeper: str,
                               transport: str) -> None:
    srv, _ = server
    client = await open_stdio(_exec(srv, sleeper, ["cat"], stdin=True), transport,
                              stdin=True)
    await client.write(b"hello ")
    await client.write(b"world\n")
    await client.wait_output(b"hello world\n")
    await client.close_stdin()
    result = await client.wait()
    assert result.stdout == b"hello world\n"
    assert result.exit_code == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_exec_large_output_intact(server: tuple[StreamServer, FakeTargets], sleeper: str,
                                        transport: str) -> None:
    srv, _ = server
    size = 10 * 1024 * 1024
    # Random data: the container hashes what it sends (on stderr) and we compare.
    url = _exec(srv, sleeper, ["sh", "-c", f"head -c {size} /dev/urandom >/tmp/big; "
                               "cat /tmp/big; sha256sum /tmp/big >&2; rm /tmp/big"])
    client = await open_stdio(url, transport)
    result = await client.wait(timeout=60)
    assert len(result.stdout) == size
    assert result.stderr.split()[0].decode() == hashlib.sha256(result.stdout).hexdigest()
    assert result.exit_code == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_exec_tty_and_resize(server: tuple[StreamServer, FakeTargets], sleeper: str,
                                   transport: str) -> None:
    srv, _ = server
    client = await open_stdio(_exec(srv, sleeper, ["sh"], stdin=True, tty=True), transport,
                              stdin=True, stderr=False, tty=True)
    await client.resize(100, 30)
    await asyncio.sleep(0.3)
    await client.write(b"stty size; tty\n")
    await client.wait_output(b"30 100")
    assert b"/dev/pts/" in client.stdout
    await client.resize(132, 43)
    await asyncio.sleep(0.3)
    await client.write(b"stty size\n")
    await client.wait_output(b"43 132")
    await client.write(b"exit 5\n")
    result = await client.wait()
    assert result.exit_code == 5


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_client_gone_kills_exec(node: Node, server: tuple[StreamServer, FakeTargets],
                                      sleeper: str, transport: str) -> None:
    srv, _ = server
    marker = f"crib-{transport}-{os.getpid()}"
    client = await open_stdio(_exec(srv, sleeper, ["sh", "-c", f"echo up; exec sleep 1{os.getpid()}"]),
                              transport)
    await client.wait_output(b"up")
    before = len(node.processes(sleeper))
    assert before >= 2, marker
    await client.close()
    for _ in range(100):
        if len(node.processes(sleeper)) == 1 and srv.active_sessions == 0:
            break
        await asyncio.sleep(0.05)
    assert len(node.processes(sleeper)) == 1
    assert srv.active_sessions == 0


async def test_exec_not_running_container(node: Node,
                                          server: tuple[StreamServer, FakeTargets]) -> None:
    srv, _ = server
    c = node.run(["true"])
    for _ in range(100):
        if node.state(c.id) == "stopped":
            break
        await asyncio.sleep(0.05)
    client = await open_stdio(_exec(srv, c.id, ["echo", "hi"]), "spdy")
    result = await client.wait()
    assert result.status is not None and result.status["status"] == "Failure"
    assert result.status["message"] == "container is not running"
    assert result.exit_code == -1


async def test_exec_websocket_base64_protocol(server: tuple[StreamServer, FakeTargets],
                                              sleeper: str) -> None:
    """`v4.base64.channel.k8s.io`: text frames, ASCII channel digit, base64 data."""
    import base64
    import json

    import aiohttp

    srv, _ = server
    url = _exec(srv, sleeper, ["sh", "-c", "head -n 1; exit 2"],
                stdin=True).replace("http", "ws", 1)
    got: dict[int, bytes] = {1: b"", 2: b"", 3: b""}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, protocols=["v4.base64.channel.k8s.io"]) as ws:
            assert ws.protocol == "v4.base64.channel.k8s.io"
            await ws.send_str("0" + base64.b64encode(b"base64 stdin\n").decode())
            async for msg in ws:
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                got[int(msg.data[0])] += base64.b64decode(msg.data[1:])
    assert got[1] == b"base64 stdin\n"
    assert json.loads(got[3])["details"]["causes"] == [{"reason": "ExitCode", "message": "2"}]


@pytest.mark.parametrize("protocol", ["v3.channel.k8s.io", "v2.channel.k8s.io",
                                      "channel.k8s.io"])
async def test_exec_older_spdy_protocols(server: tuple[StreamServer, FakeTargets],
                                         sleeper: str, protocol: str) -> None:
    """Before v4 the error stream carries text, and only on failure."""
    srv, _ = server
    ok = await open_stdio(_exec(srv, sleeper, ["echo", "fine"]), "spdy", protocols=[protocol])
    assert ok.protocol == protocol
    result = await ok.wait()
    assert (result.stdout, result.status) == (b"fine\n", None)
    bad = await open_stdio(_exec(srv, sleeper, ["sh", "-c", "exit 3"]), "spdy",
                           protocols=[protocol])
    result = await bad.wait()
    assert result.status == {"status": "Failure",
                             "message": "command terminated with non-zero exit code: "
                                        "exit status 3"}
