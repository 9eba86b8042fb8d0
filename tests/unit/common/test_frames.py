"""The frame socket (crib_common.frames): the gateway's hop for unary CRI calls.

A real daemon app served by `serve_unix` on temporary sockets, called through the
gateway's own `DaemonClient`, as in test_client.py; here what is particular to frames.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import generate_latest

from crib_common.client import DaemonClient
from crib_common.cri.runtime.v1 import VersionRequest, VersionResponse
from crib_common.errors import InvalidArgument, NotFound, Unavailable, Unimplemented
from crib_common.frames import frame_socket, pack_request, unpack_request
from crib_common.logging import RequestContext, current_request_id
from crib_common.server import CriTable, RouteTable, create_daemon_app, metrics_registry, serve_unix

VERSION = "/runtime.v1.RuntimeService/Version"


def _app() -> web.Application:
    cri = CriTable()

    @cri.unary(VERSION, VersionRequest)
    async def version(request: VersionRequest) -> VersionResponse:
        if request.version == "missing":
            raise NotFound("pod p1 not found")
        if request.version == "rid":
            return VersionResponse(version=current_request_id() or "")
        return VersionResponse(runtime_name="fake", version=request.version)

    return create_daemon_app("fake", RouteTable(), cri)


@pytest.fixture()
async def served(tmp_path: Path) -> AsyncIterator[tuple[Path, web.Application]]:
    app = _app()
    runner = await serve_unix(app, tmp_path / "d.sock")
    try:
        yield tmp_path / "d.sock", app
    finally:
        await runner.cleanup()


def test_frame_socket_sits_beside_the_rest_socket() -> None:
    assert frame_socket(Path("/run/crib/runtimed.sock")) == Path("/run/crib/runtimed.cri.sock")
    assert frame_socket(Path("/tmp/x/rt")) == Path("/tmp/x/rt.cri.sock")


def test_request_frame_round_trip() -> None:
    frame = pack_request(VERSION.encode(), b"rid-1", 2.5, b"\x0a\x02v1")
    (size,) = struct.unpack(">I", frame[:4])
    assert size == len(frame) - 4
    assert unpack_request(frame[4:]) == (VERSION, "rid-1", 2.5, b"\x0a\x02v1")
    path, rid, timeout, body = unpack_request(pack_request(b"/a/B", b"", None, b"")[4:])
    assert (path, rid, timeout, body) == ("/a/B", "", None, b"")
    with pytest.raises(ValueError, match="bad CRI frame header"):
        unpack_request(b"\x05/a/B")  # path longer than the payload, no timeout


async def test_calls_go_over_frames_and_the_rest_socket_is_not_needed(
    served: tuple[Path, web.Application]
) -> None:
    sock, app = served
    assert frame_socket(sock).exists()
    sock.unlink()  # HTTP can no longer be reached: whatever answers came over frames
    async with DaemonClient("fake", sock) as client:
        raw = await client.call_cri(VERSION, bytes(VersionRequest(version="v9")), timeout=5)
        assert VersionResponse().parse(raw).version == "v9"
        with RequestContext("rid-frames"):
            raw = await client.call_cri(VERSION, bytes(VersionRequest(version="rid")),
                                        timeout=5)
        assert VersionResponse().parse(raw).version == "rid-frames"
        # Errors come back as the same exceptions as over HTTP, and the connection stays.
        with pytest.raises(NotFound, match="pod p1 not found"):
            await client.call_cri(VERSION, bytes(VersionRequest(version="missing")), timeout=5)
        with pytest.raises(Unimplemented, match="/x.Y/Z is not implemented"):
            await client.call_cri("/x.Y/Z", b"", timeout=5)
        with pytest.raises(InvalidArgument):
            await client.call_cri(VERSION, b"\xff\xff", timeout=5)
        raw = await client.call_cri(VERSION, bytes(VersionRequest(version="again")), timeout=5)
        assert VersionResponse().parse(raw).version == "again"
    # Counted under the same route names as the HTTP calls.
    text = generate_latest(metrics_registry(app)).decode()
    assert 'route="/v1/cri/runtime.v1.RuntimeService/Version",service="fake",status="404"' in text
    assert 'route="/v1/cri/runtime.v1.RuntimeService/Version",service="fake",status="200"' in text


async def test_without_a_frame_socket_calls_go_over_http(
    served: tuple[Path, web.Application]
) -> None:
    sock, _ = served
    frame_socket(sock).unlink()
    async with DaemonClient("fake", sock) as client:
        raw = await client.call_cri(VERSION, bytes(VersionRequest(version="http")), timeout=5)
        assert VersionResponse().parse(raw).version == "http"
        with pytest.raises(NotFound):
            await client.call_cri(VERSION, bytes(VersionRequest(version="missing")), timeout=5)


async def test_cleanup_removes_the_frame_socket(tmp_path: Path) -> None:
    runner = await serve_unix(_app(), tmp_path / "d.sock")
    assert frame_socket(tmp_path / "d.sock").exists()
    await runner.cleanup()
    assert not frame_socket(tmp_path / "d.sock").exists()


async def test_a_daemon_closing_mid_call_is_unavailable(tmp_path: Path) -> None:
    sock = tmp_path / "dying.sock"

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        writer.close()

    server = await asyncio.start_unix_server(swallow, str(frame_socket(sock)))
    try:
        async with DaemonClient("runtimed", sock) as client:
            with pytest.raises(Unavailable, match="runtimed went away during the call"):
                await client.call_cri(VERSION, b"", timeout=5)
    finally:
        server.close()
        await server.wait_closed()


async def test_oversized_and_malformed_frames_are_refused(
    served: tuple[Path, web.Application]
) -> None:
    sock, _ = served
    reader, writer = await asyncio.open_unix_connection(str(frame_socket(sock)))
    try:
        # A header cut short: the daemon answers InvalidArgument and keeps the connection.
        writer.write(struct.pack(">I", 3) + b"\x09/a")
        size, status = struct.unpack(">IH", await reader.readexactly(6))
        assert status == 400
        assert b"bad CRI frame header" in await reader.readexactly(size - 2)
        writer.write(pack_request(VERSION.encode(), b"", math.nan, b""))
        size, status = struct.unpack(">IH", await reader.readexactly(6))
        assert status == 200
        await reader.readexactly(size - 2)
        # A frame over the limit: refused and closed before it is read.
        writer.write(struct.pack(">I", 1 << 30))
        size, status = struct.unpack(">IH", await reader.readexactly(6))
        assert status == 413
        assert b"exceeds the limit" in await reader.readexactly(size - 2)
        assert await reader.read() == b""
    finally:
        writer.close()
