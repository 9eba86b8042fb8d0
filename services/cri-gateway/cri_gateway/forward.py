"""One wrapper around every CRI RPC: receive, forward, map errors, log, count.

The gateway never decodes a request: a passthrough codec hands the protobuf bytes to the
owning daemon over HTTP and the daemon's bytes back to the kubelet. What the gateway adds is
policy: the size limit, the request id, the deadline passed on, and errors turned into gRPC
statuses in one place (`errors.to_grpc`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from functools import partial
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from grpclib.server import Stream
from prometheus_client import CollectorRegistry, Counter, Histogram

from crib_common.client import DaemonClient
from crib_common.errors import CribError
from crib_common.logging import RequestContext

from .errors import to_grpc, unimplemented
from .routes import LOCAL, ROUTES, SERVER_STREAMING, UNROUTED

log = structlog.get_logger("crib.gateway")
_DEBUG = partial(logging.getLogger("crib.gateway").isEnabledFor, logging.DEBUG)

LocalHandler = Callable[[bytes, float | None], Awaitable[bytes]]


class PassthroughCodec(CodecBase):
    """Moves protobuf bytes without decoding them; the owning daemon decodes."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


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
        # Calls being served, for a graceful shutdown; once closing, new calls are refused.
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

    def __mapping__(self) -> dict[str, Handler]:
        mapping: dict[str, Handler] = {}
        for path in {*ROUTES, *UNROUTED, *self.routes}:
            cardinality = (Cardinality.UNARY_STREAM if path in SERVER_STREAMING
                           else Cardinality.UNARY_UNARY)
            mapping[path] = Handler(self._handler_for(path, cardinality), cardinality,
                                    bytes, bytes)
        return mapping

    def _handler_for(self, path: str, cardinality: Cardinality) -> Callable[[Stream[Any, Any]], Any]:
        async def handle(stream: Stream[Any, Any]) -> None:
            await self._serve(path, cardinality, stream)

        return handle

    async def _serve(self, path: str, cardinality: Cardinality, stream: Stream[Any, Any]) -> None:
        rpc = path.rsplit("/", 1)[-1]
        # 16 hex digits, as before from uuid4, at a fraction of its cost (issue #2).
        request_id = _metadata_value(stream, "x-request-id") or os.urandom(8).hex()
        start = time.perf_counter()
        code = Status.OK
        self.inflight += 1
        with RequestContext(request_id, rpc=rpc):
            try:
                if self.closing:
                    # The kubelet retries on UNAVAILABLE, reaching the next gateway.
                    raise GRPCError(Status.UNAVAILABLE, "crib gateway is shutting down")
                await self._forward(path, rpc, cardinality, stream)
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
                self.inflight -= 1
                if self.inflight == 0 and self._idle is not None:
                    self._idle.set()
                elapsed = time.perf_counter() - start
                self.metrics.observe(rpc, code, elapsed)
                if _DEBUG():
                    # One line per call at debug (List/Status are frequent); failures
                    # are logged at info above.
                    log.debug("rpc", code=code.name, ms=round(elapsed * 1000, 3))

    async def _forward(
        self, path: str, rpc: str, cardinality: Cardinality, stream: Stream[Any, Any]
    ) -> None:
        owner = self.routes.get(path)
        if owner is None:
            raise unimplemented(rpc)
        if cardinality in (Cardinality.STREAM_UNARY, Cardinality.STREAM_STREAM):
            raise unimplemented(rpc)  # the CRI has no client-streaming RPCs
        request = await self._recv(stream)
        timeout = (
            stream.deadline.time_remaining() if stream.deadline is not None
            else self.default_timeout
        )
        if owner == LOCAL:
            await stream.send_message(await self.local[path](request, timeout))
            return
        client = self.clients[owner]
        if cardinality is Cardinality.UNARY_UNARY:
            reply = await client.call_cri(path, request, timeout=timeout)
            if len(reply) > self.max_message_bytes:
                # The kubelet would drop it with a bare "message larger than max"; say
                # which call and how large instead.
                raise GRPCError(
                    Status.RESOURCE_EXHAUSTED,
                    f"{rpc} answer of {len(reply)} bytes exceeds the limit of "
                    f"{self.max_message_bytes}",
                )
            await stream.send_message(reply)
            return
        await stream.send_initial_metadata()
        async for message in client.stream_cri(path, request, timeout=None):
            await stream.send_message(message)

    async def _recv(self, stream: Stream[Any, Any]) -> bytes:
        """Read the one request message, refusing an oversized one before buffering it."""
        raw = getattr(stream, "_stream", None)
        if raw is None:  # pragma: no cover - grpclib internals changed; fall back
            message = await stream.recv_message()
            return message or b""
        head = await raw.recv_data(5)
        if not head:
            raise GRPCError(Status.INVALID_ARGUMENT, "request carried no message")
        compressed, size = struct.unpack(">?I", head)
        if compressed:
            raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not supported")
        if size > self.max_message_bytes:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"request of {size} bytes exceeds the limit of {self.max_message_bytes}",
            )
        data: bytes = await raw.recv_data(size) if size else b""
        if len(data) != size:
            raise GRPCError(Status.INVALID_ARGUMENT, "request message cut short")
        return data


def _metadata_value(stream: Stream[Any, Any], key: str) -> str | None:
    metadata = stream.metadata
    if metadata is None:
        return None
    value = metadata.get(key)
    return value if isinstance(value, str) and value else None
