"""create_app(settings): netd's routes and resources.

netd owns no CRI RPC: runtimed calls it over `/v1/networks` while running and stopping
sandboxes, and the gateway reads its `/healthz` for the CRI NetworkReady condition.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from crib_common.server import CriTable, Health, RouteTable, create_daemon_app
from crib_common.settings import CribSettings

from .api import config as config_api
from .api import namespaces as namespaces_api
from .api import networks as networks_api
from .cni.invoke import PluginExec
from .manager import NetworkManager

__all__ = ["MANAGER_KEY", "create_app"]

MANAGER_KEY = web.AppKey("netd_manager", NetworkManager)


def create_app(settings: CribSettings, exec_: PluginExec | None = None) -> web.Application:
    """netd's app; the manager recovers state at startup, before the socket listens."""
    manager = NetworkManager(settings.netd, exec_)
    routes = RouteTable()
    networks_api.register(routes, manager)
    namespaces_api.register(routes, manager)
    config_api.register(routes, manager)

    async def health() -> Health:
        return await manager.health()

    app = create_daemon_app("netd", routes, CriTable(), health)
    app[MANAGER_KEY] = manager

    async def manager_ctx(_app: web.Application) -> AsyncIterator[None]:
        await manager.start()
        yield
        await manager.close()

    app.cleanup_ctx.append(manager_ctx)
    return app
