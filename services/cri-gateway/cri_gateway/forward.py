"""One wrapper around every CRI RPC: receive, forward, map errors, log, count.

The gateway never decodes a request: it hands the protobuf bytes to the owning daemon
(`DaemonClient.call_cri`, over the daemon's frame socket) and the daemon's bytes back to
the kubelet. What the gateway adds is policy: the size limit, the request id, the deadline
passed on, and errors turned into gRPC statuses in one place (`errors.to_grpc`). The gRPC
side (`server.GrpcServer`) hands each call over as a `Call`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from functools import partial
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from prometheus_client import CollectorRegistry, Counter, Histogram

from crib_common.client import DaemonClient
from crib_common.errors import CribError
from crib_common.logging import RequestContext

from .errors import to_grpc, unimplemented
from .routes import LOCAL, ROUTES, SERVER_STREAMING

log = structlog.get_logger("crib.gateway")
_DEBUG = partial(logging.getLogger("crib.gateway").isEnabledFor, logging.DEBUG)

LocalHandler = Callable[[bytes, float | None], Awaitable[bytes]]


class Call(Protocol):
    """One CRI call as the wrapper sees it, whatever carries it (`server.CallStream`)."""

    def metadata(self, key: str) -> str | None:
        """A request header (gRPC metadata), lower-case key."""

    def time_remaining(self) -> float | None:
        """Seconds left of the caller's deadline; None without one."""

    def request(self) -> bytes:
        """The request body as received: gRPC's 5-byte prefix and the message."""

    async def send_initial_metadata(self) -> None:
        """Start the answer (a stream's headers before its first message)."""

    async def send_message(self, message: bytes) -> None:
        """Send one answer message."""


class RpcMetrics:
    """Calls and latency per RPC; label children cached (see `_Metrics.observe`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "crib_gateway_rpc_total", "CRI calls by RPC and gRPC status",
            ["rpc", "code"], registry=registry,
        )
        self.latency = Histogram(
            "crib_gateway_rpc_duration_seconds", "CRI call latency by RPC", ["rpc"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                     5, 10, 30, 60, 120),
        )
        self._children: dict[tuple[str, Status], tuple[Any, Any]] = {}

    def observe(self, rpc: str, code: Status, elapsed: float) -> None:
        """Count one call and record its latency."""
        key = (rpc, code)
        pair = self._children.get(key)
        if pair is None:
            pair = self.calls.labels(rpc, code.name), self.latency.labels(rpc)
            self._children[key] = pair  # bounded: RPCs x gRPC codes
        pair[0].inc()
        pair[1].observe(elapsed)


class Gateway:
    """A grpclib servable answering every RuntimeService and ImageService path."""

    def __init__(
        self,
        clients: dict[str, DaemonClient],
        local: dict[str, LocalHandler],
        *,
        max_message_bytes: int,
        default_timeout: float,
        metrics: RpcMetrics,
        routes: dict[str, str] | None = None,
    ) -> None:
        self.clients = clients
        self.local = local
        self.max_message_bytes = max_message_bytes
        self.default_timeout = default_timeout
        self.metrics = metrics
        self.routes = ROUTES if routes is None else routes
        # Unary calls being served, for a graceful shutdown; once closing, new calls are
        # refused.
        self.inflight = 0
        self.closing = False
        self._idle: asyncio.Event | None = None

    async def wait_idle(self) -> None:
        """Return once no call is in flight."""
        if self._idle is None:
            self._idle = asyncio.Event()
        if self.inflight == 0:
            return
        self._idle.clear()
        await self._idle.wait()

    async def serve(self, path: str, call: Call) -> None:
        """Serve one call (`server.GrpcServer`'s handler); failures raise GRPCError."""
        await self._serve(path, call)

    async def _serve(self, path: str, call: Call) -> None:
        rpc = path.rsplit("/", 1)[-1]
        # 16 hex digits, as before from uuid4, at a fraction of its cost (issue #2).
        request_id = call.metadata("x-request-id") or os.urandom(8).hex()
        start = time.perf_counter()
        code = Status.OK
        # A server stream (GetContainerEvents) has no end of its own: the kubelet holds
        # one open as long as it runs. Counted as in flight, it made every graceful
        # shutdown wait the whole SHUTDOWN_TIMEOUT, refusing the kubelet's calls all the
        # while; it is cut by `GrpcServer.close` once the unary calls are done, and the
        # kubelet subscribes again to the next gateway.
        counted = 0 if path in SERVER_STREAMING else 1
        self.inflight += counted
        with RequestContext(request_id, rpc=rpc):
            try:
                if self.closing:
                    # The kubelet retries on UNAVAILABLE, reaching the next gateway.
                    raise GRPCError(Status.UNAVAILABLE, "crib gateway is shutting down")
                await self._forward(path, rpc, call)
            except GRPCError as exc:
                code = exc.status
                log.info("rpc failed", code=exc.status.name, error=exc.message)
                raise
            except CribError as exc:
                code = exc.grpc_status
                log.info("rpc failed", code=code.name, error=exc.message)
                raise to_grpc(exc) from None
            except Exception as exc:
                code = Status.INTERNAL
                log.exception("rpc crashed")
                raise GRPCError(Status.INTERNAL, f"crib gateway: {type(exc).__name__}: {exc}") from None
            finally:
                self.inflight -= counted
                if self.inflight == 0 and self._idle is not None:
                    self._idle.set()
                elapsed = time.perf_counter() - start
                self.metrics.observe(rpc, code, elapsed)
                if _DEBUG():
                    # One line per call at debug (List/Status are frequent); failures
                    # are logged at info above.
                    log.debug("rpc", code=code.name, ms=round(elapsed * 1000, 3))

    async def _forward(self, path: str, rpc: str, call: Call) -> None:
        owner = self.routes.get(path)
        if owner is None:
            raise unimplemented(rpc)
        request = self._recv(call)
        timeout = call.time_remaining()
        if timeout is None:
            timeout = self.default_timeout
        if owner == LOCAL:
            await call.send_message(await self.local[path](request, timeout))
            return
        client = self.clients[owner]
        if path not in SERVER_STREAMING:
            reply = await client.call_cri(path, request, timeout=timeout)
            if len(reply) > self.max_message_bytes:
                # The kubelet would drop it with a bare "message larger than max"; say
                # which call and how large instead.
                raise GRPCError(
                    Status.RESOURCE_EXHAUSTED,
                    f"{rpc} answer of {len(reply)} bytes exceeds the limit of "
                    f"{self.max_message_bytes}",
                )
            await call.send_message(reply)
            return
        await call.send_initial_metadata()
        async for message in client.stream_cri(path, request, timeout=None):
            await call.send_message(message)

    def _recv(self, call: Call) -> bytes:
        """The one request message, checked against the size limit and gRPC's framing.

        The server stops buffering a request once its declared size is over the limit,
        so an oversized one arrives here as its 5-byte prefix alone.
        """
        body = call.request()
        if len(body) < 5:
            raise GRPCError(Status.INVALID_ARGUMENT, "request carried no message")
        compressed, size = struct.unpack_from(">?I", body)
        if compressed:
            raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not supported")
        if size > self.max_message_bytes:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"request of {size} bytes exceeds the limit of {self.max_message_bytes}",
            )
        if len(body) != 5 + size:
            # Shorter: cut short; longer: a second message, which no unary call carries.
            raise GRPCError(Status.INVALID_ARGUMENT, "request message cut short"
                            if len(body) < 5 + size else "more than one request message")
        return body[5:]
