"""The streaming server: one-time URLs for Exec, Attach and PortForward, served over SPDY/3.1
or WebSocket upgrades on a TCP address the kubelet can reach.

The CRI RPCs validate the request and call `StreamServer.url(spec)`, which stores the spec
under a random token (`tokens.RequestCache`) and answers `http://addr:port/<kind>/<token>`.
The client (the kubelet's proxy, crictl, kubectl through the API server) then sends an HTTP
upgrade to that URL; the token is consumed on first use and expires after `stream_url_ttl`.
Anything else (unknown path, token used or expired, no or wrong upgrade, no common
subprotocol) is answered with a plain HTTP error and the connection is closed.

A small HTTP/1.1 front end on asyncio streams is enough here: after the 101 the connection
carries SPDY frames or WebSocket frames, which `spdy.py` and `websocket.py` speak directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from crib_common.errors import CribError, NotFound, Unavailable
from crib_common.server import METRICS_KEY
from crib_common.settings import RuntimedSection

from .attach import run_attach
from .exec import run_exec
from .portforward import serve_spdy_portforward, serve_ws_portforward
from .session import SpdyStdioSession, StdioOptions, StdioSession, WsStdioSession
from .status import failure_status
from .targets import StreamTargets
from .tokens import RequestCache
from .websocket import WebSocket, WsTunnel, accept_key, valid_key

__all__ = ["AttachSpec", "ExecSpec", "PortForwardSpec", "StreamServer"]

log = structlog.get_logger("runtimed.streaming")

# Subprotocols, newest first (k8s.io/apimachinery `pkg/util/remotecommand/constants.go`,
# kubelet `portforward/constants.go` and `portforward/websocket.go`), with their version.
SPDY_EXEC_PROTOCOLS = {"v4.channel.k8s.io": 4, "v3.channel.k8s.io": 3,
                       "v2.channel.k8s.io": 2, "channel.k8s.io": 1}
WS_EXEC_PROTOCOLS = {"v5.channel.k8s.io": 5, "v4.channel.k8s.io": 4, "v3.channel.k8s.io": 3,
                     "v2.channel.k8s.io": 2, "channel.k8s.io": 1,
                     "v4.base64.channel.k8s.io": 4, "v3.base64.channel.k8s.io": 3,
                     "v2.base64.channel.k8s.io": 2, "base64.channel.k8s.io": 1}
SPDY_PORTFORWARD_PROTOCOL = "portforward.k8s.io"
WS_PORTFORWARD_PROTOCOLS = ("v4.channel.k8s.io", "portforward.k8s.io")
# SPDY carried inside WebSocket binary messages (client-go's tunneling dialer, kubectl
# port-forward's default since 1.31).
WS_SPDY_TUNNEL_PROTOCOL = "SPDY/3.1+portforward.k8s.io"
REQUEST_TIMEOUT = 10.0
MAX_HEAD = 16 * 1024
_PATH = re.compile(r"/(exec|attach|portforward)/([A-Za-z0-9_-]{8,64})")


@dataclass(frozen=True)
class ExecSpec:
    """A validated CRI ExecRequest waiting for its client."""

    container_id: str
    cmd: tuple[str, ...]
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool
    kind: str = field(default="exec", init=False)


@dataclass(frozen=True)
class AttachSpec:
    """A validated CRI AttachRequest waiting for its client."""

    container_id: str
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool
    kind: str = field(default="attach", init=False)


@dataclass(frozen=True)
class PortForwardSpec:
    """A validated CRI PortForwardRequest waiting for its client."""

    sandbox_id: str
    ports: tuple[int, ...]
    kind: str = field(default="portforward", init=False)


Spec = ExecSpec | AttachSpec | PortForwardSpec


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, list[str]]

    def header(self, name: str) -> str:
        values = self.headers.get(name)
        return values[0] if values else ""

    def tokens(self, name: str) -> list[str]:
        """Comma-separated values of every `name` header line."""
        return [t.strip() for v in self.headers.get(name, []) for t in v.split(",")
                if t.strip()]


class _HttpError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class _StreamMetrics:
    """Sessions by kind and transport, refusals by HTTP status, sessions open now."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.sessions = Counter("crib_stream_sessions_total",
                                "Streaming sessions started, by kind and transport",
                                ["kind", "transport"], registry=registry)
        self.refused = Counter("crib_stream_refused_total",
                               "Streaming requests refused, by HTTP status", ["status"],
                               registry=registry)
        self.active = Gauge("crib_stream_active_connections",
                            "Connections open on the streaming server", registry=registry)


class StreamServer:
    """Serves exec/attach/port-forward sessions for one runtimed."""

    def __init__(self, settings: RuntimedSection, targets: StreamTargets | None = None) -> None:
        self._address = settings.stream_address
        self._port = settings.stream_port
        self._idle_timeout = settings.stream_idle_timeout
        self._cache: RequestCache[Spec] = RequestCache(settings.stream_url_ttl)
        self._targets = targets
        self._server: asyncio.base_events.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.bound: tuple[str, int] | None = None
        self._metrics: _StreamMetrics | None = None

    # -- wiring ---------------------------------------------------------------------------

    @property
    def targets(self) -> StreamTargets:
        if self._targets is None:
            raise Unavailable("streaming server has no container source yet")
        return self._targets

    def set_targets(self, targets: StreamTargets) -> None:
        """Give the server its source of containers and sandboxes (once runtimed has one)."""
        self._targets = targets

    async def start(self) -> None:
        """Listen on the configured address (port 0: an ephemeral port)."""
        self._server = await asyncio.start_server(self._accept, self._address, self._port,
                                                  limit=256 * 1024)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.bound = (host, port)
        log.info("streaming server listening", address=host, port=port)

    async def stop(self) -> None:
        """Stop listening and end every session (their processes are killed)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp `cleanup_ctx` entry: start with the daemon, stop with it; counters go to
        the daemon's /metrics registry."""
        registry = getattr(app.get(METRICS_KEY), "registry", None)
        if isinstance(registry, CollectorRegistry):
            self._metrics = _StreamMetrics(registry)
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    @property
    def base_url(self) -> str:
        if self.bound is None:
            raise Unavailable("streaming server is not listening")
        host, port = self.bound
        with contextlib.suppress(ValueError):
            ip = ipaddress.ip_address(host)
            if ip.is_unspecified:
                # Listening on every address: the kubelet on this node reaches loopback.
                ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
            host = f"[{ip}]" if ip.version == 6 else str(ip)
        return f"http://{host}:{port}"

    def url(self, spec: Spec) -> str:
        """Store `spec` under a fresh one-time token and return its URL."""
        base = self.base_url
        token = self._cache.insert(spec)
        return f"{base}/{spec.kind}/{token}"

    @property
    def active_sessions(self) -> int:
        return len(self._handlers)

    # -- connections ----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        if self._metrics is not None:
            self._metrics.active.inc()
        watchdog = None
        if self._idle_timeout > 0:
            watchdog = asyncio.create_task(_idle_watchdog(reader, writer, self._idle_timeout,
                                                          task))
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("streaming session failed")
        finally:
            if watchdog is not None:
                watchdog.cancel()
            self._handlers.discard(task)
            if self._metrics is not None:
                self._metrics.active.dec()
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(_read_request(reader), REQUEST_TIMEOUT)
            spec = self._route(request)
            await self._upgrade_and_run(request, spec, reader, writer)
        except _HttpError as e:
            log.info("streaming request refused", status=e.status, reason=e.message)
            if self._metrics is not None:
                self._metrics.refused.labels(str(e.status)).inc()
            _respond(writer, e.status, e.reason, e.message)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            return

    def _route(self, request: _Request) -> Spec:
        if request.method not in ("GET", "POST"):
            raise _HttpError(405, "Method Not Allowed", "method not allowed")
        match = _PATH.fullmatch(request.path)
        if match is None:
            raise _HttpError(404, "Not Found", "not found")
        spec = self._cache.consume(match.group(2))
        if spec is None or spec.kind != match.group(1):
            raise _HttpError(404, "Not Found", "unknown or expired streaming token")
        return spec

    async def _upgrade_and_run(self, request: _Request, spec: Spec,
                               reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        upgrade = request.header("upgrade").lower()
        connection = [t.lower() for t in request.tokens("connection")]
        if "upgrade" not in connection or not upgrade:
            raise _HttpError(400, "Bad Request", "an upgrade to SPDY/3.1 or websocket is required")
        if upgrade == "websocket":
            await self._run_websocket(request, spec, reader, writer)
        elif upgrade.startswith("spdy/3.1"):
            await self._run_spdy(request, spec, reader, writer)
        else:
            raise _HttpError(400, "Bad Request", f"unsupported upgrade {upgrade!r}")

    async def _run_spdy(self, request: _Request, spec: Spec, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        offered = request.tokens("x-stream-protocol-version")
        if isinstance(spec, PortForwardSpec):
            supported = {SPDY_PORTFORWARD_PROTOCOL: 1}
        else:
            supported = SPDY_EXEC_PROTOCOLS
        protocol = _negotiate(offered, supported)
        if protocol is None and offered:
            raise _HttpError(403, "Forbidden",
                             f"unable to upgrade: unable to negotiate protocol: client supports "
                             f"{offered}, server supports {list(supported)}")
        # No header: a client from before negotiation, v1 semantics (kubelet does the same).
        version = supported[protocol] if protocol else 1
        extra = {"X-Stream-Protocol-Version": protocol} if protocol else {}
        target = await self._resolve(spec)
        _respond_upgrade(writer, "SPDY/3.1", extra)
        await writer.drain()
        log.info("streaming session", kind=spec.kind, transport="spdy", protocol=protocol)
        self._count(spec.kind, "spdy")
        if isinstance(spec, PortForwardSpec):
            await serve_spdy_portforward(reader, writer, target)
            return
        session = SpdyStdioSession(_options(spec), version)
        if not await session.start(reader, writer):
            await session.abort()
            return
        await self._run_stdio(spec, target, session)

    async def _run_websocket(self, request: _Request, spec: Spec, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        key = request.header("sec-websocket-key")
        if request.header("sec-websocket-version") != "13" or not valid_key(key):
            raise _HttpError(400, "Bad Request", "bad websocket handshake")
        offered = request.tokens("sec-websocket-protocol")
        if isinstance(spec, PortForwardSpec):
            supported = {WS_SPDY_TUNNEL_PROTOCOL: 0} | {p: 4 for p in WS_PORTFORWARD_PROTOCOLS}
        else:
            supported = WS_EXEC_PROTOCOLS
        protocol = _negotiate(offered, supported)
        if protocol is None and offered:
            raise _HttpError(400, "Bad Request",
                             f"no supported websocket subprotocol in {offered}")
        version = supported[protocol] if protocol else 1
        ports: list[int] = []
        if isinstance(spec, PortForwardSpec) and protocol != WS_SPDY_TUNNEL_PROTOCOL:
            ports = _query_ports(request.query) or list(spec.ports)
            if not ports:
                raise _HttpError(400, "Bad Request", "query parameter \"port\" is required")
        target = await self._resolve(spec)
        extra = {"Sec-WebSocket-Accept": accept_key(key)}
        if protocol:
            extra["Sec-WebSocket-Protocol"] = protocol
        _respond_upgrade(writer, "websocket", extra)
        await writer.drain()
        log.info("streaming session", kind=spec.kind, transport="websocket", protocol=protocol)
        self._count(spec.kind, "websocket")
        ws = WebSocket(reader, writer)
        if isinstance(spec, PortForwardSpec) and protocol == WS_SPDY_TUNNEL_PROTOCOL:
            tunnel = WsTunnel(ws)
            try:
                await serve_spdy_portforward(tunnel.reader, tunnel, target)
            finally:
                await tunnel.aclose()
            return
        if isinstance(spec, PortForwardSpec):
            await serve_ws_portforward(ws, ports, target)
            return
        session = WsStdioSession(_options(spec), version, ws,
                                 base64_frames="base64" in (protocol or ""))
        await session.start()
        await self._run_stdio(spec, target, session)

    def _count(self, kind: str, transport: str) -> None:
        if self._metrics is not None:
            self._metrics.sessions.labels(kind, transport).inc()

    async def _resolve(self, spec: Spec) -> Any:
        """The current target of a spec; a container or sandbox gone since the RPC is a
        410 before the upgrade."""
        try:
            if isinstance(spec, PortForwardSpec):
                return await self.targets.sandbox_target(spec.sandbox_id)
            return await self.targets.container_target(spec.container_id)
        except NotFound as e:
            raise _HttpError(410, "Gone", e.message) from e
        except CribError as e:
            raise _HttpError(e.http_status, "Error", e.message) from e

    async def _run_stdio(self, spec: Spec, target: Any, session: StdioSession) -> None:
        try:
            if isinstance(spec, ExecSpec):
                if not target.running:
                    await session.finish(failure_status("container is not running"))
                    return
                await run_exec(target, list(spec.cmd), session)
            else:
                await run_attach(target, self.targets, session)
        finally:
            await session.abort()


async def _idle_watchdog(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         timeout: float, session: asyncio.Task[None]) -> None:
    """Cancel `session` once no byte has moved either way for `timeout` seconds (the
    kubelet's and containerd's stream idle timeout): an abandoned exec, attach or
    port-forward does not hold its process and sockets forever. Cancelling ends the
    session the way a client leaving does, killing what it runs."""
    last = time.monotonic()
    feed, write = reader.feed_data, writer.write

    def fed(data: Any) -> None:
        nonlocal last
        last = time.monotonic()
        feed(data)

    def wrote(data: Any) -> None:
        nonlocal last
        last = time.monotonic()
        write(data)

    # Both sides of the connection pass here: the reader's protocol feeds it, every
    # protocol implementation writes through the writer.
    reader.feed_data = fed  # type: ignore[method-assign]
    writer.write = wrote  # type: ignore[method-assign]
    while True:
        idle = time.monotonic() - last
        if idle >= timeout:
            log.info("streaming session idle, closed", seconds=round(idle, 1))
            session.cancel()
            return
        await asyncio.sleep(min(timeout - idle, 30.0) + 0.01)


def _options(spec: ExecSpec | AttachSpec) -> StdioOptions:
    return StdioOptions(stdin=spec.stdin, stdout=spec.stdout, stderr=spec.stderr, tty=spec.tty)


def _negotiate(offered: list[str], supported: dict[str, int]) -> str | None:
    """The first protocol the client offers that we support (kubelet `httpstream.Handshake`
    and wsstream pick in the client's order)."""
    for protocol in offered:
        if protocol in supported:
            return protocol
    return None


def _query_ports(query: dict[str, list[str]]) -> list[int]:
    ports: list[int] = []
    for value in query.get("port", []):
        for item in value.split(","):
            try:
                port = int(item)
            except ValueError as e:
                raise _HttpError(400, "Bad Request", f"invalid port {item!r}") from e
            if not 0 < port < 65536:
                raise _HttpError(400, "Bad Request", f"invalid port {item!r}")
            ports.append(port)
    return ports


async def _read_request(reader: asyncio.StreamReader) -> _Request:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEAD:
        raise _HttpError(431, "Request Header Fields Too Large", "request head too large")
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError as e:
        raise _HttpError(400, "Bad Request", "malformed request line") from e
    if not version.startswith("HTTP/1."):
        raise _HttpError(400, "Bad Request", "HTTP/1.x only")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _HttpError(400, "Bad Request", "malformed header")
        headers.setdefault(name.lower(), []).append(value.strip())
    parts = urlsplit(target)
    return _Request(method, parts.path, parse_qs(parts.query), headers)


def _respond(writer: asyncio.StreamWriter, status: int, reason: str, body: str) -> None:
    data = (body + "\n").encode()
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)


def _respond_upgrade(writer: asyncio.StreamWriter, upgrade: str, extra: dict[str, str]) -> None:
    lines = ["HTTP/1.1 101 Switching Protocols", "Connection: Upgrade", f"Upgrade: {upgrade}"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
