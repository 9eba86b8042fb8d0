"""The daemon skeleton: CRI dispatch, error bodies, request id, metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from crib_common.client import DaemonClient
from crib_common.cri.runtime.v1 import (
    VersionRequest,
    VersionResponse,
)
from crib_common.errors import Unimplemented
from crib_common.server import (
    CriTable,
    RouteTable,
    create_daemon_app,
    serve_unix,
)

VERSION = "/runtime.v1.RuntimeService/Version"


def _app() -> web.Application:
    cri = CriTable()

    @cri.unary(VERSION, VersionRequest)
    async def version(request: VersionRequest) -> VersionResponse:
        if request.version == "bug":
            raise KeyError("secret internals")
        if request.version == "pre-encoded":
            return b"\n\x05as-is"  # sent verbatim, not re-encoded
        return VersionResponse(version=request.version or "0.1.0")

    @cri.stream("/runtime.v1.RuntimeService/GetContainerEvents", VersionRequest)
    async def events(request: VersionRequest) -> AsyncIterator[VersionResponse]:
        for i in range(3):
            yield VersionResponse(version=str(i))

    return create_daemon_app("fake", RouteTable(), cri)


@pytest.fixture()
async def client(tmp_path: Path) -> AsyncIterator[DaemonClient]:
    sock = tmp_path / "d.sock"
    runner = await serve_unix(_app(), sock)
    c = DaemonClient("fake", sock)
    try:
        yield c
    finally:
        await c.close()
        await runner.cleanup()


async def test_dispatch_unary_stream_and_unimplemented(client: DaemonClient) -> None:
    raw = await client.call_cri(VERSION, bytes(VersionRequest(version="x")), timeout=5)
    assert VersionResponse().parse(raw).version == "x"
    items = [VersionResponse().parse(m) async for m in
             client.stream_cri("/runtime.v1.RuntimeService/GetContainerEvents", b"",
                               timeout=5)]
    assert [i.version for i in items] == ["0", "1", "2"]
    with pytest.raises(Unimplemented, match="/runtime.v1.RuntimeService/ListContainers"):
        await client.call_cri("/runtime.v1.RuntimeService/ListContainers", b"", timeout=5)


async def test_pre_encoded_answer_is_sent_as_is(client: DaemonClient) -> None:
    raw = await client.call_cri(VERSION, bytes(VersionRequest(version="pre-encoded")), timeout=5)
    assert raw == b"\n\x05as-is"
    assert VersionResponse().parse(raw).version == "as-is"


async def test_openapi_is_built_on_first_request(client: DaemonClient) -> None:
    for _ in range(2):  # the second answer comes from the cached document
        _, body = await client.request_bytes("GET", "/openapi.json")
        doc = json.loads(body)
        assert doc["info"]["title"] == "crib fake"
        assert "/healthz" in doc["paths"]


async def test_bug_is_internal_without_traceback(client: DaemonClient) -> None:
    status, body = await _raw(client, VERSION, bytes(VersionRequest(version="bug")))
    assert status == 500
    parsed = json.loads(body)
    assert parsed["kind"] == "internal"
    assert "KeyError" in parsed["message"] and "Traceback" not in parsed["message"]


async def test_bad_timeout_header_is_invalid_argument(client: DaemonClient) -> None:
    session = client._get_session()
    async with session.post("/v1/cri" + VERSION, data=b"",
                            headers={"X-Crib-Timeout": "soon"}) as resp:
        assert resp.status == 400
        assert "X-Crib-Timeout" in (await resp.json())["message"]


async def test_request_id_is_echoed_and_metrics_count(client: DaemonClient) -> None:
    session = client._get_session()
    async with session.post("/v1/cri" + VERSION, data=b"",
                            headers={"X-Request-Id": "abc"}) as resp:
        assert resp.headers["X-Request-Id"] == "abc"
    async with session.get("/healthz") as resp:
        assert resp.headers["X-Request-Id"]  # generated when not given
        assert (await resp.json())["service"] == "fake"
    async with session.get("/metrics") as resp:
        text = await resp.text()
    assert 'crib_requests_total{route="/v1/cri/runtime.v1.RuntimeService/Version"' in text \
        or "crib_requests_total{" in text
    assert "/v1/cri/runtime.v1.RuntimeService/Version" in text
    async with session.get("/openapi.json") as resp:
        doc = await resp.json()
    assert "/healthz" in doc["paths"]


async def _raw(client: DaemonClient, path: str, body: bytes) -> tuple[int, bytes]:
    session = client._get_session()
    async with session.post("/v1/cri" + path, data=body) as resp:
        return resp.status, await resp.read()


def test_server_defers_betterproto_and_settles_memory() -> None:
    """netd serves no CRI: importing the server skeleton must not load betterproto (#5)."""
    import subprocess
    import sys

    code = (
        "import sys, gc\n"
        "import crib_common.server as s\n"
        "assert 'betterproto' not in sys.modules, 'betterproto loaded eagerly'\n"
        "s.limit_malloc_arenas()\n"
        "s.settle_memory()\n"
        "assert gc.get_freeze_count() > 0\n"
        "s.CriTable().add_to(__import__('aiohttp').web.Application())\n"
        "assert 'betterproto' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_heap_is_trimmed_after_a_burst_and_under_steady_calls() -> None:
    from crib_common import server

    trims: list[int] = []
    task = asyncio.ensure_future(
        server.trim_after_bursts(interval=0.05, longest=0.3, trim=trims.append))
    try:
        await asyncio.sleep(0.2)
        assert trims == []  # no calls, nothing to give back
        server._ACTIVITY.calls += 5  # a burst...
        await asyncio.sleep(0.2)
        assert trims == [0]  # ...trimmed once the next check saw no call
        # Steady calls: trimmed every `longest` seconds all the same.
        for _ in range(16):
            server._ACTIVITY.calls += 1
            await asyncio.sleep(0.05)
        assert 2 <= len(trims) <= 4
    finally:
        task.cancel()
