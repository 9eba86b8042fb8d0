"""crib-gateway: serve the CRI on a UNIX socket and forward each RPC to its daemon."""

from __future__ import annotations

import sys

# structlog imports rich, when it is installed (the CLI draws with it), for console
# tracebacks; a daemon logs JSON lines and would carry ~3 MiB of it (issue 14). This runs
# before anything imports structlog.
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

import asyncio
import contextlib
import os
import signal
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
import uvloop

from crib_common.client import DaemonClient
from crib_common.server import (
    METRICS_KEY, create_daemon_app, daemon_settings, limit_malloc_arenas, serve_unix,
    settle_memory,
)
from crib_common.settings import CribSettings

from .forward import Gateway, RpcMetrics
from .routes import IMAGED, RUNTIMED, RUNTIME
from .server import GrpcServer
from .status import make_status_handler

log = structlog.get_logger("crib.gateway")


def build_gateway(
    settings: CribSettings, registry: CollectorRegistry
) -> tuple[Gateway, list[DaemonClient]]:
    """The gateway servable with one client per daemon (also used by tests)."""
    gw = settings.gateway
    clients = {
        IMAGED: DaemonClient(IMAGED, settings.imaged.socket, connect_timeout=gw.connect_timeout),
        RUNTIMED: DaemonClient(RUNTIMED, settings.runtimed.socket, connect_timeout=gw.connect_timeout),
    }
    netd = DaemonClient("netd", settings.netd.socket, connect_timeout=gw.connect_timeout)
    metrics = RpcMetrics(registry)
    local = {RUNTIME + "Status": make_status_handler(clients[RUNTIMED], netd, clients[IMAGED])}
    gateway = Gateway(
        clients, local, max_message_bytes=gw.max_message_bytes,
        default_timeout=gw.default_timeout, metrics=metrics,
    )
    return gateway, [*clients.values(), netd]


async def run(settings: CribSettings) -> None:
    http_app = create_daemon_app("gateway")
    metrics: Any = http_app[METRICS_KEY]  # the daemon skeleton's _Metrics
    gateway, clients = build_gateway(settings, metrics.registry)
    http_runner = await serve_unix(http_app, settings.gateway.http_socket, settings.gateway.socket_mode)
    socket = settings.gateway.socket
    socket.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        socket.unlink()
    server = GrpcServer(gateway.serve, max_request=settings.gateway.max_message_bytes)
    await server.start(str(socket))
    os.chmod(socket, settings.gateway.socket_mode)
    log.info("listening", socket=str(socket))
    # Runs once `_wait_for_signal` has installed its handlers, so a SIGTERM during the
    # (blocking) settling still stops the gateway cleanly.
    asyncio.get_running_loop().call_soon(settle_memory)
    await _wait_for_signal()
    # Graceful: stop accepting, let the calls in flight finish (bounded), then close.
    # `server.close()` cancels the calls still in flight, so it comes last.
    log.info("shutting down", inflight=gateway.inflight)
    gateway.closing = True
    server.stop_accepting()
    with contextlib.suppress(FileNotFoundError):
        socket.unlink()
    drained = await _drain(gateway, SHUTDOWN_TIMEOUT)
    if not drained:
        log.warning("calls still in flight at shutdown", inflight=gateway.inflight)
    server.close()
    await server.wait_closed()
    await http_runner.cleanup()
    for client in clients:
        await client.close()
    # Leave no socket behind: a stale one makes the kubelet (or `crib`) wait on a dead path.
    for path in (socket, settings.gateway.http_socket):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    log.info("stopped")


# How long SIGTERM waits for calls in flight; the kubelet retries whatever is cut.
SHUTDOWN_TIMEOUT = 10.0


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _drain(gateway: Gateway, timeout: float) -> bool:
    """Wait until no call is in flight, or `timeout`; a second signal stops waiting."""
    second = asyncio.ensure_future(_wait_for_signal())
    drained = asyncio.ensure_future(gateway.wait_idle())
    try:
        await asyncio.wait({second, drained}, timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        second.cancel()
    finished = drained.done()
    drained.cancel()
    return finished


def main() -> None:
    settings = daemon_settings("gateway")
    limit_malloc_arenas()
    uvloop.install()
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
