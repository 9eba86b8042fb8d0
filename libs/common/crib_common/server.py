"""The HTTP side every daemon shares: app skeleton, middlewares, CRI dispatch, serving.

A daemon builds its app with `create_daemon_app`, registers its operator REST routes on a
`RouteTable` (which also yields the OpenAPI document) and its CRI methods on a `CriTable`,
then calls `serve` with its UNIX socket path.

CRI calls arrive from the gateway as `POST /v1/cri/<Service>/<Method>` with the protobuf
request as body (`application/x-protobuf`); the answer is the protobuf response, or for a
server-streaming RPC a chunked body of messages each prefixed with a 4-byte big-endian
length. The kubelet's deadline arrives as the header `X-Crib-Timeout` (seconds left) and
is enforced around the handler; the request id as `X-Request-Id`, echoed back.

Unary CRI calls also arrive on the daemon's frame socket (`crib_common.frames`), which
`serve_unix` opens beside the REST socket when the app has a `CriTable`: the same
methods, request id, deadline, log line, metrics and error bodies, without HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError

from .version import __version__
from .errors import CribError, DeadlineExceeded, Internal, InvalidArgument, Unimplemented
from .frames import FrameServer, frame_socket, unpack_request
from .logging import RequestContext
from .models.base import JsonModel

if TYPE_CHECKING:
    # betterproto (and the CRI wire helpers over it) are loaded by the first `CriTable`:
    # netd serves no CRI and so never pays for them (about 2 MB of RSS, issue #5).
    import betterproto

    from .settings import CribSettings

__all__ = [
    "CriTable",
    "HEALTH_KEY",
    "Health",
    "RouteTable",
    "create_daemon_app",
    "json_response",
    "parse_body",
    "serve",
    "serve_unix",
    "run_daemon",
    "daemon_settings",
    "limit_malloc_arenas",
    "settle_memory",
    "trim_after_bursts",
    "METRICS_KEY",
    "metrics_registry",
    "REQUEST_ID_HEADER",
    "TIMEOUT_HEADER",
    "STREAM_CONTENT_TYPE",
    "PROTO_CONTENT_TYPE",
]

REQUEST_ID_HEADER = "X-Request-Id"
TIMEOUT_HEADER = "X-Crib-Timeout"
PROTO_CONTENT_TYPE = "application/x-protobuf"
STREAM_CONTENT_TYPE = "application/x-crib-stream"

log = structlog.get_logger("crib.server")

M = TypeVar("M", bound=BaseModel)
P = TypeVar("P", bound="betterproto.Message")


class Health(JsonModel):
    """What `/healthz` answers; `ready` false carries a reason and message."""

    service: str
    version: str = __version__
    ready: bool = True
    reason: str = ""
    message: str = ""
    details: dict[str, Any] = {}


HealthCheck = Callable[[], Awaitable[Health]]
HEALTH_KEY = web.AppKey("crib_health_check", object)
SERVICE_KEY = web.AppKey("crib_service", str)
METRICS_KEY = web.AppKey("crib_metrics", object)
FRAMES_KEY = web.AppKey("crib_frames", object)


# ---------------------------------------------------------------- operator REST routes


@dataclass
class _RouteInfo:
    method: str
    path: str
    summary: str
    request: type[BaseModel] | None
    response: type[BaseModel] | None
    response_list: bool
    query: dict[str, str]
    streaming: bool


@dataclass
class RouteTable:
    """Operator REST routes with the metadata the OpenAPI document is built from."""

    routes: list[tuple[_RouteInfo, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = (
        field(default_factory=list)
    )

    def route(
        self,
        method: str,
        path: str,
        summary: str,
        *,
        request: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        response_list: bool = False,
        query: dict[str, str] | None = None,
        streaming: bool = False,
    ) -> Callable[
        [Callable[[web.Request], Awaitable[web.StreamResponse]]],
        Callable[[web.Request], Awaitable[web.StreamResponse]],
    ]:
        def register(
            fn: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
            info = _RouteInfo(
                method.upper(), path, summary, request, response, response_list,
                query or {}, streaming,
            )
            self.routes.append((info, fn))
            return fn

        return register

    def add_to(self, app: web.Application) -> None:
        for info, fn in self.routes:
            app.router.add_route(info.method, info.path, fn)

    def openapi(self, title: str, extra: list[_RouteInfo] | None = None) -> dict[str, Any]:
        paths: dict[str, Any] = {}
        schemas: dict[str, Any] = {}

        def ref(model: type[BaseModel]) -> dict[str, Any]:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in schema.pop("$defs", {}).items():
                schemas[name] = sub
            schemas[model.__name__] = schema
            return {"$ref": f"#/components/schemas/{model.__name__}"}

        for info, _fn in self.routes + [(i, None) for i in (extra or [])]:
            op: dict[str, Any] = {"summary": info.summary, "responses": {}}
            params = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in _path_params(info.path)
            ]
            params += [
                {"name": name, "in": "query", "required": False,
                 "schema": {"type": "string"}, "description": desc}
                for name, desc in info.query.items()
            ]
            if params:
                op["parameters"] = params
            if info.request is not None:
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": ref(info.request)}},
                }
            if info.response is not None:
                body = ref(info.response)
                if info.response_list:
                    body = {"type": "array", "items": body}
                ctype = "application/x-ndjson" if info.streaming else "application/json"
                op["responses"]["200"] = {
                    "description": "OK", "content": {ctype: {"schema": body}},
                }
            else:
                op["responses"]["204" if info.method == "DELETE" else "200"] = {
                    "description": "OK"
                }
            op["responses"]["default"] = {
                "description": "Error",
                "content": {"application/json": {"schema": ref(_ErrorModel)}},
            }
            paths.setdefault(_openapi_path(info.path), {})[info.method.lower()] = op
        return {
            "openapi": "3.0.3",
            "info": {"title": title, "version": __version__},
            "paths": paths,
            "components": {"schemas": schemas},
        }


class _ErrorModel(JsonModel):
    kind: str
    message: str


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")]


def _openapi_path(path: str) -> str:
    return "/".join(
        "{" + part[1:-1].split(":")[0] + "}" if part.startswith("{") else part
        for part in path.split("/")
    )


async def parse_body(request: web.Request, model: type[M]) -> M:
    """Parse a JSON body into `model`, or answer InvalidArgument naming the problem."""
    raw = await request.read()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidArgument(f"bad request body: {problems}") from None


def json_response(model: BaseModel | list[Any], status: int = 200) -> web.Response:
    if isinstance(model, list):
        text = "[" + ",".join(m.model_dump_json() for m in model) + "]"
    else:
        text = model.model_dump_json()
    return web.Response(text=text, status=status, content_type="application/json")


# ---------------------------------------------------------------- CRI dispatch

UnaryHandler = Callable[[Any], Awaitable["betterproto.Message"]]
StreamHandler = Callable[[Any], AsyncIterator["betterproto.Message"]]


@dataclass
class _CriMethod:
    request_type: type[betterproto.Message]
    handler: Callable[[Any], Any]
    streaming: bool


@dataclass
class CriTable:
    """The CRI methods one daemon implements, keyed by gRPC path."""

    methods: dict[str, _CriMethod] = field(default_factory=dict)
    # crib_common.wire's check_wire, decode_message and encode_message, bound by `add_to`.
    _check_wire: Callable[[bytes, type[Any]], None] = field(init=False, repr=False)
    _decode: Callable[[type[Any], bytes], Any] = field(init=False, repr=False)
    _encode: Callable[[Any], bytes] = field(init=False, repr=False)

    def unary(
        self, path: str, request_type: type[P]
    ) -> Callable[[Callable[[P], Awaitable[Any]]], Callable[[P], Awaitable[Any]]]:
        def register(fn: Callable[[P], Awaitable[Any]]) -> Callable[[P], Awaitable[Any]]:
            self.methods[path] = _CriMethod(request_type, fn, False)
            return fn

        return register

    def stream(
        self, path: str, request_type: type[P]
    ) -> Callable[[Callable[[P], AsyncIterator[Any]]], Callable[[P], AsyncIterator[Any]]]:
        def register(fn: Callable[[P], AsyncIterator[Any]]) -> Callable[[P], AsyncIterator[Any]]:
            self.methods[path] = _CriMethod(request_type, fn, True)
            return fn

        return register

    def add_to(self, app: web.Application) -> None:
        from . import wire  # loaded here, not at import: see TYPE_CHECKING above

        self._check_wire = wire.check_wire
        self._decode = wire.decode_message
        self._encode = wire.encode_message
        app.router.add_post("/v1/cri/{service}/{method}", self._dispatch)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = f"/{request.match_info['service']}/{request.match_info['method']}"
        method, message = self._parse(path, await request.read())
        if not method.streaming:
            body = await self._call(path, method, message, _timeout_of(request))
            return web.Response(body=body, content_type=PROTO_CONTENT_TYPE)
        # Called before the answer starts: a handler that checks its request eagerly (a
        # plain function returning an iterator) fails with its own status, not mid-stream.
        items = method.handler(message)
        response = web.StreamResponse(headers={"Content-Type": STREAM_CONTENT_TYPE})
        response.enable_chunked_encoding()
        await response.prepare(request)
        async for item in items:
            # Items may come pre-encoded too (runtimed's list pages).
            data = item if isinstance(item, bytes) else self._encode(item)
            await response.write(struct.pack(">I", len(data)) + data)
        await response.write_eof()
        return response

    async def call_unary(self, path: str, raw: bytes, timeout: float | None) -> bytes:
        """Answer one unary CRI call from its protobuf bytes (the frame socket's path)."""
        method, message = self._parse(path, raw)
        if method.streaming:
            raise InvalidArgument(f"{path} streams its answer: call it over HTTP")
        return await self._call(path, method, message, timeout)

    def _parse(self, path: str, raw: bytes) -> tuple[_CriMethod, Any]:
        method = self.methods.get(path)
        if method is None:
            raise Unimplemented(f"{path} is not implemented by crib")
        # betterproto's parser is lenient (b"\xff\xff" parses as an empty message), so the
        # wire format is checked first: bad input is InvalidArgument naming the field.
        self._check_wire(raw, method.request_type)
        try:
            message = self._decode(method.request_type, raw)
        except Exception as exc:  # betterproto raises assorted errors on bad wire data
            raise InvalidArgument(f"malformed {method.request_type.__name__}: {exc}") from None
        structlog.contextvars.bind_contextvars(rpc=path.rsplit("/", 1)[-1])
        return method, message

    async def _call(self, path: str, method: _CriMethod, message: Any,
                    timeout: float | None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                reply = await method.handler(message)
        except TimeoutError:
            raise DeadlineExceeded(f"{path} did not finish within {timeout:.3f}s") from None
        # A handler whose answer never changes may return it pre-encoded (Version).
        return reply if isinstance(reply, bytes) else self._encode(reply)


def _timeout_of(request: web.Request) -> float | None:
    raw = request.headers.get(TIMEOUT_HEADER)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgument(f"bad {TIMEOUT_HEADER} header {raw!r}") from None
    return max(value, 0.0)


# ---------------------------------------------------------------- middlewares and app


class _Metrics:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "crib_requests_total", "Requests served, by route and status",
            ["service", "route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "crib_request_duration_seconds", "Request latency, by route",
            ["service", "route"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                     5, 10, 30, 60, 120),
        )
        self.up = Gauge(
            "crib_up", "1 while the daemon serves", ["service", "version"],
            registry=self.registry,
        )
        self.up.labels(service, __version__).set(1)
        self.service = service
        # Label children by (route, status): `labels()` takes a lock and validates the
        # label values on every call, which is measurable on a sub-millisecond request.
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def observe(self, route: str, status: int, elapsed: float) -> None:
        """Count one request and record its latency."""
        key = (route, status)
        pair = self._children.get(key)
        if pair is None:
            pair = (
                self.calls.labels(self.service, route, str(status)),
                self.latency.labels(self.service, route),
            )
            if len(self._children) < 4096:  # bounded: routes x statuses is small
                self._children[key] = pair
        pair[0].inc()
        pair[1].observe(elapsed)


def metrics_registry(app: web.Application) -> CollectorRegistry:
    """The registry `/metrics` serves, for a daemon's own collectors."""
    metrics: _Metrics = app[METRICS_KEY]  # type: ignore[assignment]
    return metrics.registry


def _route_name(request: web.Request) -> str:
    if request.path.startswith("/v1/cri/"):
        return request.path
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


class _Activity:
    """Calls served since start, for `trim_after_bursts`."""

    calls = 0


_ACTIVITY = _Activity()


@web.middleware
async def _edge_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Request id, one canonical log line, metrics, and errors mapped to the JSON body."""
    # 16 hex digits, as uuid4().hex[:16] gave, at a seventh of its cost (issue #2).
    request_id = request.headers.get(REQUEST_ID_HEADER) or os.urandom(8).hex()
    route = _route_name(request)
    _ACTIVITY.calls += 1
    metrics: _Metrics = request.app[METRICS_KEY]  # type: ignore[assignment]
    start = time.perf_counter()
    status = 500
    with RequestContext(request_id):
        try:
            response = await handler(request)
            status = response.status
        except web.HTTPException as exc:
            status = exc.status
            raise
        except CribError as exc:
            status = exc.http_status
            log.info("request failed", route=route, kind=exc.kind, error=exc.message)
            response = web.Response(
                text=exc.body().model_dump_json(), status=exc.http_status,
                content_type="application/json",
            )
        except (asyncio.CancelledError, ConnectionResetError):
            status = 499
            raise
        except Exception as exc:
            log.exception("internal error", route=route)
            err = Internal(f"internal error: {type(exc).__name__}: {exc}")
            response = web.Response(
                text=err.body().model_dump_json(), status=500, content_type="application/json",
            )
        finally:
            elapsed = time.perf_counter() - start
            metrics.observe(route, status, elapsed)
            if route not in ("/healthz", "/metrics") and _debug_enabled():
                log.debug(
                    "request", method=request.method, route=route, status=status,
                    ms=round(elapsed * 1000, 3),
                )
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request_id
        return response


_SERVER_LOGGER = logging.getLogger("crib.server")


def _debug_enabled() -> bool:
    # stdlib caches this per logger; checking first skips building the event dict. The
    # logger is looked up once: `getLogger` takes the logging module's lock on every call.
    return _SERVER_LOGGER.isEnabledFor(logging.DEBUG)


@dataclass
class _Frames:
    """A daemon's frame socket (`crib_common.frames`): started by `serve_unix` beside the
    REST socket when the app serves CRI methods, closed with the app."""

    cri: CriTable
    metrics: _Metrics
    server: FrameServer | None = None
    shutdown_timeout: float = 10.0

    async def dispatch(self, payload: bytes) -> tuple[int, bytes]:
        """One unary call off the frame socket, with `_edge_middleware`'s request id, log
        line, metrics and error bodies, so both ways in answer and count alike."""
        try:
            path, request_id, timeout, raw = unpack_request(payload)
        except ValueError as exc:
            return 400, InvalidArgument(str(exc)).body().model_dump_json().encode()
        route = "/v1/cri" + path
        start = time.perf_counter()
        status = 500
        _ACTIVITY.calls += 1
        with RequestContext(request_id or os.urandom(8).hex()):
            try:
                body = await self.cri.call_unary(path, raw, timeout)
                status = 200
                return 200, body
            except CribError as exc:
                status = exc.http_status
                log.info("request failed", route=route, kind=exc.kind, error=exc.message)
                return status, exc.body().model_dump_json().encode()
            except asyncio.CancelledError:
                status = 499
                raise
            except Exception as exc:
                log.exception("internal error", route=route)
                err = Internal(f"internal error: {type(exc).__name__}: {exc}")
                return 500, err.body().model_dump_json().encode()
            finally:
                elapsed = time.perf_counter() - start
                self.metrics.observe(route, status, elapsed)
                if _debug_enabled():
                    log.debug("request", method="FRAME", route=route, status=status,
                              ms=round(elapsed * 1000, 3))

    async def start(self, rest_socket: Path, mode: int, shutdown_timeout: float) -> None:
        self.shutdown_timeout = shutdown_timeout
        server = FrameServer(self.dispatch)
        path = frame_socket(rest_socket)
        try:
            await server.start(path, mode)
        except OSError as exc:
            # The gateway falls back to HTTP on the REST socket when this one is missing.
            log.warning("frame socket not served", socket=str(path), error=str(exc))
            return
        self.server = server

    async def close(self, _app: web.Application) -> None:
        if self.server is not None:
            await self.server.close(self.shutdown_timeout)
            self.server = None


async def _healthz(request: web.Request) -> web.Response:
    check: HealthCheck | None = request.app.get(HEALTH_KEY)  # type: ignore[assignment]
    health = await check() if check else Health(service=request.app[SERVICE_KEY])
    return json_response(health, status=200 if health.ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    metrics: _Metrics = request.app[METRICS_KEY]  # type: ignore[assignment]
    return web.Response(
        body=generate_latest(metrics.registry),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


def create_daemon_app(
    service: str,
    routes: RouteTable | None = None,
    cri: CriTable | None = None,
    health: HealthCheck | None = None,
) -> web.Application:
    """The common skeleton: middlewares, /healthz, /metrics, /openapi.json, CRI dispatch."""
    app = web.Application(middlewares=[_edge_middleware], client_max_size=64 * 1024 * 1024)
    app[SERVICE_KEY] = service
    app[METRICS_KEY] = _Metrics(service)
    if health is not None:
        app[HEALTH_KEY] = health
    table = routes or RouteTable()
    table.add_to(app)
    if cri is not None:
        cri.add_to(app)
        frames = _Frames(cri, app[METRICS_KEY])  # type: ignore[arg-type]
        app[FRAMES_KEY] = frames
        app.on_shutdown.append(frames.close)
    extra = [
        _RouteInfo("GET", "/healthz", "Health and readiness", None, Health, False, {}, False),
        _RouteInfo("GET", "/metrics", "Prometheus metrics", None, None, False, {}, False),
        _RouteInfo("GET", "/openapi.json", "This document", None, None, False, {}, False),
    ]
    # Built on the first request, not at start: the JSON schemas of every model (and
    # pydantic's schema generator) would otherwise sit in each daemon's idle RSS (issue #5).
    document: dict[str, Any] = {}

    async def openapi(_request: web.Request) -> web.Response:
        if not document:
            document.update(table.openapi(f"crib {service}", extra))
        return web.json_response(document)

    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/openapi.json", openapi)
    return app


async def serve_unix(app: web.Application, socket_path: Path, mode: int = 0o660,
                     shutdown_timeout: float = 10.0) -> web.AppRunner:
    """Start serving `app` on a UNIX socket; the caller cleans the runner up."""
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, access_log=None,
                           handle_signals=False)
    await runner.setup()
    site = web.UnixSite(runner, str(socket_path))
    await site.start()
    os.chmod(socket_path, mode)
    frames = app.get(FRAMES_KEY)
    if isinstance(frames, _Frames):
        # Unary CRI calls from the gateway: the same methods, a lighter hop.
        await frames.start(socket_path, mode, shutdown_timeout)
    log.info("listening", socket=str(socket_path))
    return runner


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Tune glibc's malloc before any thread starts (issues #5 and 14).

    Arenas: glibc gives each thread that allocates (the default executor's workers:
    SQLite, `to_thread`, DNS) an arena of its own, up to 8 per core; each keeps the pages
    it once used, so a burst of thread work leaves megabytes of idle RSS per arena. Our
    threads run short blocking calls, so two arenas cost nothing measurable in contention.
    Same as `MALLOC_ARENA_MAX=2`, but set by the daemon so every way of starting it gets it;
    an operator's `MALLOC_ARENA_MAX` in the environment wins.

    Thresholds: glibc serves allocations over 128 KiB with their own mmap, returned at
    free, but raises that threshold (up to 32 MiB) each time such a block is freed, so after
    the first pull or large list the big buffers land in the heap and keep it grown. Fixing
    both thresholds (`M_MMAP_THRESHOLD`, `M_TRIM_THRESHOLD`, mallopt(3)) keeps big buffers
    out of the heap and lets free() give the heap's top back. `MALLOC_MMAP_THRESHOLD_` in
    the environment wins likewise.
    """
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        if "MALLOC_ARENA_MAX" not in os.environ:
            libc.mallopt(-8, arenas)  # <malloc.h> M_ARENA_MAX
        if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
            libc.mallopt(-3, _MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
            libc.mallopt(-1, _MMAP_THRESHOLD)  # M_TRIM_THRESHOLD


# glibc's own starting value (mallopt(3)): only its growth is turned off.
_MMAP_THRESHOLD = 128 * 1024


def settle_memory() -> None:
    """Once started: return start-up garbage to the OS and freeze what is left (issue #5).

    Start-up (settings, imports, recovery) frees much of what it allocated, but glibc keeps
    freed heap pages; `malloc_trim` gives them back. `gc.freeze` moves the surviving
    start-up objects out of the collector's generations, so later collections neither
    scan nor touch (and so dirty) them.
    """
    import gc

    gc.collect()
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


# How often `trim_after_bursts` looks, and the longest it lets a busy heap go untrimmed.
TRIM_CHECK_INTERVAL = 1.0
TRIM_LONGEST = 30.0


async def trim_after_bursts(interval: float = TRIM_CHECK_INTERVAL,
                            longest: float = TRIM_LONGEST,
                            trim: Callable[[int], object] | None = None) -> None:
    """Give freed heap back to the OS once a burst of calls is over (issue 14).

    glibc returns only the top of the heap on free(); pages freed below it stay with the
    process until `malloc_trim`, so the peak of a burst (a pull, twenty pod creates) stays
    in its RSS. Runs `malloc_trim(0)` once a check finds no call since the last one after
    some, or every `longest` seconds under steady calls (the kubelet relists every
    second). A trim of our heaps takes well under a millisecond.
    """
    if trim is None:
        try:
            import ctypes

            trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            return
    loop = asyncio.get_running_loop()
    seen = _ACTIVITY.calls
    busy_since: float | None = None
    while True:
        await asyncio.sleep(interval)
        now = loop.time()
        if _ACTIVITY.calls != seen:
            seen = _ACTIVITY.calls
            if busy_since is None:
                busy_since = now
            if now - busy_since < longest:
                continue
        elif busy_since is None:
            continue
        trim(0)
        busy_since = None


async def serve(app: web.Application, socket_path: Path, mode: int = 0o660,
                shutdown_timeout: float = 10.0) -> None:
    """Serve `app` on a UNIX socket until SIGTERM or SIGINT, then drain and return."""
    runner = await serve_unix(app, socket_path, mode, shutdown_timeout)
    trimmer = asyncio.get_running_loop().create_task(trim_after_bursts())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # After the handlers: a SIGTERM during the (blocking) settling is still a clean stop.
    settle_memory()
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        trimmer.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()


def daemon_settings(service: str) -> CribSettings:
    """The settings of `crib-<service>` with its logging configured; a bad setting ends
    the process with exit code 2 and the reason on stderr, before anything starts."""
    import sys

    from .logging import configure_logging
    from .settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"crib-{service}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log, service)
    return settings


def run_daemon(
    service: str,
    build: Callable[[Any], Awaitable[web.Application] | web.Application],
    socket_of: Callable[[Any], Path],
) -> None:
    """A daemon's `main`: settings, then logging, then its app, then serve until SIGTERM."""
    import uvloop

    settings = daemon_settings(service)
    limit_malloc_arenas()

    async def main() -> None:
        app = build(settings)
        if not isinstance(app, web.Application):
            app = await app
        await serve(app, socket_of(settings))

    uvloop.install()
    asyncio.run(main())
