"""The gateway's one wrapper, served by its own gRPC server on a temporary socket and
called by grpclib's client, forwarding to daemon apps on temporary sockets.

The daemons here are `crib_common.server` apps (the production daemon side) serving a few
CRI methods; the gateway is built by `build_gateway` and served by `GrpcServer`, as
`crib-gateway` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.client import Channel
from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs

from crib_common.client import DaemonClient
from crib_common.cri.runtime.v1 import (
    ContainerEventResponse,
    ContainerStatusRequest,
    GetEventsRequest,
    ImageSpec,
    ImageStatusRequest,
    ImageStatusResponse,
    StatusRequest,
    StatusResponse,
    VersionRequest,
    VersionResponse,
)
from crib_common.errors import NotFound
from crib_common.server import CriTable, Health, RouteTable, create_daemon_app, serve_unix
from crib_common.settings import CribSettings
from cri_gateway.__main__ import build_gateway
from cri_gateway.forward import Gateway
from cri_gateway.server import GrpcServer

RT = "/runtime.v1.RuntimeService/"
IM = "/runtime.v1.ImageService/"


_EVENTS_END = asyncio.Event()


def _runtimed() -> web.Application:
    cri = CriTable()

    @cri.unary(RT + "Version", VersionRequest)
    async def version(_r: VersionRequest) -> VersionResponse:
        return VersionResponse(runtime_name="crib", version="0.1.0")

    @cri.unary(RT + "ContainerStatus", ContainerStatusRequest)
    async def status(r: ContainerStatusRequest) -> VersionResponse:
        raise NotFound(f"container {r.container_id!r} not found")

    @cri.stream(RT + "GetContainerEvents", GetEventsRequest)
    async def events(_r: GetEventsRequest) -> AsyncIterator[ContainerEventResponse]:
        yield ContainerEventResponse(container_id="c1")
        await _EVENTS_END.wait()  # as the real one: no end of its own (the test ends it)

    async def health() -> Health:
        return Health(service="runtimed")

    return create_daemon_app("runtimed", RouteTable(), cri, health)


def _imaged() -> web.Application:
    cri = CriTable()

    @cri.unary(IM + "ImageStatus", ImageStatusRequest)
    async def image_status(r: ImageStatusRequest) -> ImageStatusResponse:
        if r.image.image == "slow":
            await asyncio.sleep(3)
        if r.image.image == "huge-answer":
            return ImageStatusResponse(info={"big": "y" * (1024 * 1024 + 10)})
        return ImageStatusResponse(info={"len": str(len(r.image.image))})

    async def health() -> Health:
        return Health(service="imaged", ready=False, reason="StoreLoading",
                      message="loading 3 images")

    return create_daemon_app("imaged", RouteTable(), cri, health)


class _Raw:
    """grpclib codec moving bytes as they are: the tests build and parse the messages."""

    __content_subtype__ = "proto"

    def encode(self, message: bytes, message_type: type) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: type) -> bytes:
        return data


@dataclass
class Env:
    channel: Channel
    gateway: Gateway
    registry: CollectorRegistry
    clients: list[DaemonClient]

    async def call(self, path: str, body: bytes, timeout: float | None = 5,
                   metadata: dict[str, str] | None = None) -> bytes:
        async with self.channel.request(
            path, Cardinality.UNARY_UNARY, bytes, bytes, timeout=timeout, metadata=metadata,
        ) as stream:
            await stream.send_message(body, end=True)
            reply = await stream.recv_message()
            assert reply is not None
            return reply


@pytest.fixture()
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    settings = CribSettings(
        runtimed={"socket": tmp_path / "rt.sock"},
        imaged={"socket": tmp_path / "im.sock"},
        netd={"socket": tmp_path / "netd.sock"},  # never started
        gateway={"max_message_bytes": 1024 * 1024},
    )
    runners = [await serve_unix(_runtimed(), tmp_path / "rt.sock"),
               await serve_unix(_imaged(), tmp_path / "im.sock")]
    registry = CollectorRegistry()
    gateway, clients = build_gateway(settings, registry)
    server = GrpcServer(gateway.serve, max_request=settings.gateway.max_message_bytes)
    await server.start(str(tmp_path / "cri.sock"))
    channel = Channel(path=str(tmp_path / "cri.sock"), codec=_Raw())  # type: ignore[arg-type]
    try:
        yield Env(channel, gateway, registry, clients)
    finally:
        channel.close()
        server.close()
        await server.wait_closed()
        for c in clients:
            await c.close()
        for r in runners:
            await r.cleanup()


async def test_forwards_bytes_both_ways(env: Env) -> None:
    reply = VersionResponse().parse(await env.call(RT + "Version", bytes(VersionRequest())))
    assert reply.runtime_name == "crib"
    image = ImageStatusResponse().parse(await env.call(
        IM + "ImageStatus", bytes(ImageStatusRequest(image=ImageSpec(image="abc")))))
    assert image.info == {"len": "3"}
    metrics = generate_latest(env.registry).decode()
    assert 'crib_gateway_rpc_total{code="OK",rpc="Version"} 1.0' in metrics


async def test_daemon_error_maps_to_grpc_status(env: Env) -> None:
    with pytest.raises(GRPCError) as info:
        await env.call(RT + "ContainerStatus", bytes(ContainerStatusRequest(container_id="c9")))
    assert info.value.status is Status.NOT_FOUND
    assert "'c9' not found" in (info.value.message or "")


async def test_routed_but_unimplemented_names_the_rpc(env: Env) -> None:
    with pytest.raises(GRPCError) as info:
        await env.call(RT + "ListContainers", b"")
    assert info.value.status is Status.UNIMPLEMENTED
    assert "ListContainers" in (info.value.message or "")


async def test_unrouted_rpc_is_unimplemented_without_a_daemon(env: Env) -> None:
    env.gateway.routes = {}
    with pytest.raises(GRPCError) as info:
        await env.call(RT + "Version", b"")
    assert info.value.status is Status.UNIMPLEMENTED
    assert "Version" in (info.value.message or "")


async def test_missing_daemon_is_unavailable_naming_it(env: Env, tmp_path: Path) -> None:
    env.gateway.clients["runtimed"] = DaemonClient("runtimed", tmp_path / "gone.sock")
    with pytest.raises(GRPCError) as info:
        await env.call(RT + "Version", b"")
    assert info.value.status is Status.UNAVAILABLE
    assert "runtimed" in (info.value.message or "")


async def test_oversized_request_is_resource_exhausted(env: Env) -> None:
    big = bytes(ImageStatusRequest(image=ImageSpec(image="x" * (1024 * 1024 + 1))))
    with pytest.raises(GRPCError) as info:
        await env.call(IM + "ImageStatus", big)
    assert info.value.status is Status.RESOURCE_EXHAUSTED
    # Just under the limit passes.
    ok = bytes(ImageStatusRequest(image=ImageSpec(image="x" * (1024 * 1024 - 64))))
    assert ImageStatusResponse().parse(await env.call(IM + "ImageStatus", ok)).info


async def test_oversized_answer_is_resource_exhausted_naming_the_rpc(env: Env) -> None:
    with pytest.raises(GRPCError) as info:
        await env.call(IM + "ImageStatus",
                       bytes(ImageStatusRequest(image=ImageSpec(image="huge-answer"))))
    assert info.value.status is Status.RESOURCE_EXHAUSTED
    assert "ImageStatus answer of" in (info.value.message or "")


async def test_deadline_is_passed_on(env: Env) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    with capture_logs() as logs:
        # grpclib's client gives up at its own deadline (TimeoutError); what matters here
        # is that the daemon was told the deadline and gave up too, not 3 s later.
        with pytest.raises((GRPCError, TimeoutError)):
            await env.call(IM + "ImageStatus",
                           bytes(ImageStatusRequest(image=ImageSpec(image="slow"))),
                           timeout=0.3)
        for _ in range(50):
            if any(e.get("kind") == "deadline_exceeded" for e in logs):
                break
            await asyncio.sleep(0.02)
    assert loop.time() - start < 2
    failed = [e for e in logs if e.get("kind") == "deadline_exceeded"]
    assert failed and "ImageStatus" in failed[0]["error"]


async def test_status_reports_each_daemon(env: Env) -> None:
    reply = StatusResponse().parse(await env.call(RT + "Status", bytes(StatusRequest())))
    conditions = {c.type: c for c in reply.status.conditions}
    # imaged answers not-ready: the runtime cannot create containers, with imaged's reason.
    assert conditions["RuntimeReady"].status is False
    assert conditions["RuntimeReady"].reason == "StoreLoading"
    assert conditions["NetworkReady"].status is False
    assert conditions["NetworkReady"].reason == "NetdUnavailable"
    assert "netd" in conditions["NetworkReady"].message


async def test_status_rejects_malformed_request(env: Env) -> None:
    with pytest.raises(GRPCError) as info:
        await env.call(RT + "Status", b"\xff\xff")
    assert info.value.status is Status.INVALID_ARGUMENT


async def test_an_open_stream_does_not_hold_the_drain(env: Env) -> None:
    """The kubelet keeps GetContainerEvents open all its life: a graceful shutdown waits
    for the unary calls in flight only, or it would always take its whole timeout."""
    _EVENTS_END.clear()
    async with env.channel.request(RT + "GetContainerEvents", Cardinality.UNARY_STREAM,
                                   bytes, bytes, timeout=30) as stream:
        await stream.send_message(bytes(GetEventsRequest()), end=True)
        first = await stream.recv_message()
        assert first is not None
        assert ContainerEventResponse().parse(first).container_id == "c1"
        assert env.gateway.inflight == 0
        await asyncio.wait_for(env.gateway.wait_idle(), 1)
        slow = asyncio.ensure_future(env.call(
            IM + "ImageStatus", bytes(ImageStatusRequest(image=ImageSpec(image="slow")))))
        await asyncio.sleep(0.2)
        assert env.gateway.inflight == 1  # a unary call does hold it
        await asyncio.wait_for(env.gateway.wait_idle(), 5)
        ImageStatusResponse().parse(await asyncio.wait_for(slow, 5))
        await stream.cancel()
    _EVENTS_END.set()
