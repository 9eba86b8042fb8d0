"""crib-gateway: serve the CRI on a UNIX socket and forward each RPC to its daemon."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

import structlog
from prometheus_client import CollectorRegistry
import uvloop
from grpclib.utils import graceful_exit

from crib_common.client import DaemonClient
from crib_common.logging import configure_logging
from crib_common.server import METRICS_KEY, create_daemon_app, serve_unix
from crib_common.settings import CribSettings, SettingsError, load_settings

from .forward import Gateway, PassthroughCodec, RpcMetrics
from .routes import IMAGED, RUNTIMED, RUNTIME
from .server import CoalescingServer
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
    gateway, clients = build_gateway(settings, http_app[METRICS_KEY].registry)
    http_runner = await serve_unix(http_app, settings.gateway.http_socket, settings.gateway.socket_mode)
    socket = settings.gateway.socket
    socket.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        socket.unlink()
    server = CoalescingServer([gateway], codec=PassthroughCodec())
    with graceful_exit([server]):
        await server.start(path=str(socket))
        os.chmod(socket, settings.gateway.socket_mode)
        log.info("listening", socket=str(socket))
        await server.wait_closed()
    await http_runner.cleanup()
    for client in clients:
        await client.close()
    # Leave no socket behind: a stale one makes the kubelet (or `crib`) wait on a dead path.
    for path in (socket, settings.gateway.http_socket):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    log.info("stopped")


def main() -> None:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"crib-gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log, "gateway")
    uvloop.install()
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
