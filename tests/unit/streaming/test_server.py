"""The streaming server's front door: one-time tokens, expiry, refused upgrades."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crib_common.errors import NotFound
from crib_common.settings import RuntimedSection
from runtimed.streaming import (
    ContainerTarget,
    ExecSpec,
    PortForwardSpec,
    SandboxTarget,
    StreamServer,
    StreamTargets,
)
from tests.support.streamclient import UpgradeRefused, open_stdio, raw_request


class NoContainers:
    """Targets with one stopped container and nothing else (no runtime is ever run)."""

    async def container_target(self, container_id: str) -> ContainerTarget:
        if container_id != "stopped":
            raise NotFound(f"container {container_id} not found")
        return ContainerTarget(id="stopped", running=False, runtime_path="/bin/false",
                               runtime_root=Path("/nonexistent"))

    async def sandbox_target(self, sandbox_id: str) -> SandboxTarget:
        raise NotFound(f"pod sandbox {sandbox_id} not found")

    async def container_exit_code(self, container_id: str, timeout: float) -> int | None:
        return None


SPDY = {"Connection": "Upgrade", "Upgrade": "SPDY/3.1",
        "X-Stream-Protocol-Version": "v4.channel.k8s.io"}


@pytest.fixture
async def srv() -> AsyncIterator[StreamServer]:
    s = StreamServer(RuntimedSection(stream_url_ttl=0.3), NoContainers())
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def _spec(cid: str = "stopped") -> ExecSpec:
    return ExecSpec(cid, ("true",), stdin=False, stdout=True, stderr=True, tty=False)


def test_targets_protocol_is_satisfied() -> None:
    assert isinstance(NoContainers(), StreamTargets)


async def test_defaults_loopback_ephemeral(srv: StreamServer) -> None:
    assert srv.bound is not None
    assert srv.bound[0] == "127.0.0.1" and srv.bound[1] > 0
    url = srv.url(_spec())
    assert url.startswith(f"http://127.0.0.1:{srv.bound[1]}/exec/")
    assert srv.url(PortForwardSpec("p", (80,))).split("/")[3] == "portforward"


async def test_url_is_single_use(srv: StreamServer) -> None:
    url = srv.url(_spec())
    client = await open_stdio(url, "spdy")
    result = await client.wait()
    assert result.status is not None and result.status["message"] == "container is not running"
    with pytest.raises(UpgradeRefused) as e:
        await open_stdio(url, "spdy")
    assert e.value.status == 404


async def test_url_expires(srv: StreamServer) -> None:
    url = srv.url(_spec())
    await asyncio.sleep(0.4)
    status, _, _, writer = await raw_request(url, SPDY)
    writer.close()
    assert status == 404


@pytest.mark.parametrize("headers,expected", [
    ({}, 400),                                                     # no upgrade at all
    ({"Connection": "Upgrade", "Upgrade": "h2c"}, 400),            # not ours
    ({"Connection": "Upgrade", "Upgrade": "websocket"}, 400),      # no key/version
    ({"Connection": "Upgrade", "Upgrade": "SPDY/3.1",
      "X-Stream-Protocol-Version": "v9.channel.k8s.io"}, 403),     # no common protocol
    ({"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
      "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
      "Sec-WebSocket-Protocol": "base64.nothing"}, 400),
])
async def test_garbage_upgrades_refused(srv: StreamServer, headers: dict[str, str],
                                        expected: int) -> None:
    status, _, _, writer = await raw_request(srv.url(_spec()), headers)
    writer.close()
    assert status == expected


async def test_unknown_paths_and_tokens_refused(srv: StreamServer) -> None:
    base = srv.base_url
    for path in ("/", "/exec/", "/exec/AAAAAAAAAAAAAAAA", "/attach/../exec/x", "/metrics"):
        status, _, _, writer = await raw_request(base + path, SPDY, method="GET")
        writer.close()
        assert status == 404, path
    # A token is bound to its kind.
    url = srv.url(_spec())
    status, _, _, writer = await raw_request(url.replace("/exec/", "/attach/"), SPDY)
    writer.close()
    assert status == 404


async def test_garbage_bytes_refused(srv: StreamServer) -> None:
    assert srv.bound is not None
    reader, writer = await asyncio.open_connection(*srv.bound)
    writer.write(b"\x80\x03\x00\x01garbage garbage\r\n\r\n")
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 400")


async def test_gone_sandbox_refused_before_upgrade(srv: StreamServer) -> None:
    status, _, _, writer = await raw_request(
        srv.url(PortForwardSpec("gone", ())),
        {"Connection": "Upgrade", "Upgrade": "SPDY/3.1",
         "X-Stream-Protocol-Version": "portforward.k8s.io"})
    writer.close()
    assert status == 410


async def test_stop_ends_sessions(srv: StreamServer) -> None:
    assert srv.bound is not None
    reader, writer = await asyncio.open_connection(*srv.bound)
    writer.write(b"GET /exec/")  # a half-sent request holds a session open
    await writer.drain()
    await asyncio.sleep(0.05)
    assert srv.active_sessions == 1
    await srv.stop()
    assert srv.active_sessions == 0
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_lifecycle_in_daemon_app_and_metrics() -> None:
    """As wired in runtimed: a cleanup_ctx entry starts and stops the server, and its
    counters appear on the daemon's /metrics."""
    from aiohttp.test_utils import TestClient, TestServer

    from crib_common.server import create_daemon_app

    stream = StreamServer(RuntimedSection(), NoContainers())
    app = create_daemon_app("runtimed")
    app.cleanup_ctx.append(stream.context)
    async with TestClient(TestServer(app)) as client:
        assert stream.bound is not None
        status, _, _, writer = await raw_request(stream.base_url + "/exec/nope-nope", SPDY)
        writer.close()
        assert status == 404
        result = await (await open_stdio(stream.url(_spec()), "ws")).wait()
        assert result.exit_code == -1
        text = await (await client.get("/metrics")).text()
        assert 'crib_stream_refused_total{status="404"} 1.0' in text
        assert 'crib_stream_sessions_total{kind="exec",transport="websocket"} 1.0' in text
    assert stream.bound is not None and stream._server is None  # stopped with the app


@pytest.mark.parametrize("address,expected", [("0.0.0.0", "http://127.0.0.1:"),
                                              ("::1", "http://[::1]:")])
async def test_advertised_address(address: str, expected: str) -> None:
    s = StreamServer(RuntimedSection(stream_address=address), NoContainers())
    await s.start()
    try:
        assert s.url(_spec()).startswith(expected)
        status, _, _, writer = await raw_request(s.url(_spec()), {})
        writer.close()
        assert status == 400  # reachable at the advertised address
    finally:
        await s.stop()
