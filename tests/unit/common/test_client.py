"""DaemonClient against a real daemon app on a temporary UNIX socket (in-process)."""

from __future__ import annotations

import asyncio
import socket as pysocket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from crib_common.client import DaemonClient
from crib_common.cri.runtime.v1 import VersionRequest, VersionResponse
from crib_common.errors import DeadlineExceeded, Internal, NotFound, Unavailable
from crib_common.logging import RequestContext
from crib_common.server import CriTable, RouteTable, create_daemon_app, json_response, serve_unix
from crib_common.server import Health

VERSION = "/runtime.v1.RuntimeService/Version"


def _app(seen: list[dict[str, str]]) -> web.Application:
    cri = CriTable()

    @cri.unary(VERSION, VersionRequest)
    async def version(request: VersionRequest) -> VersionResponse:
        if request.version == "slow":
            await asyncio.sleep(5)
        if request.version == "missing":
            raise NotFound("pod p1 not found")
        if request.version == "boom":
            raise ValueError("a bug")
        return VersionResponse(runtime_name="fake", version=request.version)

    routes = RouteTable()

    @routes.route("GET", "/v1/headers", "echo headers")
    async def headers(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return json_response(Health(service="echo"))

    return create_daemon_app("fake", routes, cri)


@pytest.fixture()
async def daemon(tmp_path: Path) -> AsyncIterator[tuple[Path, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    sock = tmp_path / "d.sock"
    runner = await serve_unix(_app(seen), sock)
    try:
        yield sock, seen
    finally:
        await runner.cleanup()


async def test_missing_socket_is_unavailable_naming_the_daemon(tmp_path: Path) -> None:
    async with DaemonClient("runtimed", tmp_path / "nope.sock") as client:
        with pytest.raises(Unavailable, match=r"runtimed is not available.*nope\.sock"):
            await client.call_cri(VERSION, b"", timeout=2)
        with pytest.raises(Unavailable, match="runtimed"):
            await client.get_model("/healthz", Health)
        with pytest.raises(Unavailable, match="runtimed"):
            await client.health()


async def test_refusing_socket_is_unavailable(tmp_path: Path) -> None:
    # A socket file nobody listens on: what a kill -9'd daemon leaves behind.
    path = tmp_path / "dead.sock"
    s = pysocket.socket(pysocket.AF_UNIX)
    s.bind(str(path))
    s.close()
    async with DaemonClient("imaged", path) as client:
        with pytest.raises(Unavailable, match="imaged"):
            await client.call_cri(VERSION, b"", timeout=2)


async def test_unary_call_and_error_mapping(daemon: tuple[Path, list[dict[str, str]]]) -> None:
    sock, _ = daemon
    async with DaemonClient("fake", sock) as client:
        raw = await client.call_cri(VERSION, bytes(VersionRequest(version="v9")), timeout=5)
        assert VersionResponse().parse(raw).version == "v9"
        with pytest.raises(NotFound, match="pod p1 not found"):
            await client.call_cri(VERSION, bytes(VersionRequest(version="missing")), timeout=5)
        with pytest.raises(Internal) as info:
            await client.call_cri(VERSION, bytes(VersionRequest(version="boom")), timeout=5)
        assert "Traceback" not in info.value.message
        # The connection is reused after errors too.
        for _ in range(3):
            await client.call_cri(VERSION, b"", timeout=5)


async def test_deadline_is_enforced_on_both_sides(
    daemon: tuple[Path, list[dict[str, str]]]
) -> None:
    sock, _ = daemon
    async with DaemonClient("fake", sock) as client:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(DeadlineExceeded):
            await client.call_cri(VERSION, bytes(VersionRequest(version="slow")), timeout=0.3)
        assert loop.time() - start < 2
        # The daemon-side timeout (X-Crib-Timeout) answers first when the client waits longer.
        _, body = await client.request_bytes("GET", "/healthz")
        assert body


async def test_request_id_and_timeout_headers_are_sent(
    daemon: tuple[Path, list[dict[str, str]]]
) -> None:
    sock, seen = daemon
    async with DaemonClient("fake", sock) as client:
        with RequestContext("rid-123"):
            await client.get_model("/v1/headers", Health, timeout=7)
    assert seen[-1]["x-request-id"] == "rid-123"
    assert float(seen[-1]["x-crib-timeout"]) == pytest.approx(7)


async def test_reconnects_after_the_daemon_restarts(tmp_path: Path) -> None:
    sock = tmp_path / "r.sock"
    runner = await serve_unix(_app([]), sock)
    client = DaemonClient("fake", sock)
    try:
        await client.call_cri(VERSION, b"", timeout=5)  # leaves a pooled connection
        await runner.cleanup()
        with pytest.raises(Unavailable):
            await client.call_cri(VERSION, b"", timeout=5)
        runner = await serve_unix(_app([]), sock)
        raw = await client.call_cri(VERSION, bytes(VersionRequest(version="back")), timeout=5)
        assert VersionResponse().parse(raw).version == "back"
    finally:
        await client.close()
        await runner.cleanup()


async def test_interrupted_call_does_not_poison_the_pool(
    daemon: tuple[Path, list[dict[str, str]]]
) -> None:
    # A call cut by its deadline leaves its answer unread on that connection; the next
    # call must not read it as its own.
    sock, _ = daemon
    async with DaemonClient("fake", sock) as client:
        with pytest.raises(DeadlineExceeded):
            await client.call_cri(VERSION, bytes(VersionRequest(version="slow")), timeout=0.2)
        for tag in ("a", "b", "c"):
            raw = await client.call_cri(VERSION, bytes(VersionRequest(version=tag)), timeout=5)
            assert VersionResponse().parse(raw).version == tag


async def test_concurrent_calls_each_get_their_own_answer(
    daemon: tuple[Path, list[dict[str, str]]]
) -> None:
    sock, _ = daemon
    async with DaemonClient("fake", sock) as client:
        tags = [f"t{i}" for i in range(40)]
        raws = await asyncio.gather(*(
            client.call_cri(VERSION, bytes(VersionRequest(version=t)), timeout=5) for t in tags
        ))
        assert [VersionResponse().parse(r).version for r in raws] == tags


async def test_daemon_dying_with_the_request_is_unavailable(tmp_path: Path) -> None:
    # A fresh connection that reads the request and closes without an answer: what a
    # daemon killed mid-call looks like. It used to escape as an internal error.
    path = tmp_path / "dying.sock"

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_unix_server(swallow, str(path))
    try:
        async with DaemonClient("runtimed", path) as client:
            with pytest.raises(Unavailable, match="runtimed went away during the call"):
                await client.call_cri(VERSION, b"", timeout=5)
    finally:
        server.close()
        await server.wait_closed()
