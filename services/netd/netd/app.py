"""create_app(settings): netd's routes and resources.

netd owns no CRI RPC: runtimed calls it over `/v1/networks` while running and stopping
sandboxes, and the gateway reads its `/healthz` for the CRI NetworkReady condition.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import Histogram

from crib_common.server import METRICS_KEY, CriTable, Health, RouteTable, create_daemon_app
from crib_common.settings import CribSettings

from .api import config as config_api
from .api import namespaces as namespaces_api
from .api import networks as networks_api
from .cni.invoke import ExecPlugin, PluginExec
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
    if isinstance(manager.chain.exec, ExecPlugin):
        _wire_plugin_metrics(app, manager.chain.exec)

    async def manager_ctx(_app: web.Application) -> AsyncIterator[None]:
        await manager.start()
        yield
        await manager.close()

    app.cleanup_ctx.append(manager_ctx)
    return app


def _wire_plugin_metrics(app: web.Application, exec_: ExecPlugin) -> None:
    """Time every plugin call on /metrics, by plugin, command and outcome."""
    registry = app[METRICS_KEY].registry  # type: ignore[attr-defined]
    seconds = Histogram(
        "crib_netd_cni_plugin_seconds", "CNI plugin calls, by plugin, command and outcome",
        ["plugin", "command", "ok"], registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    )

    def observe(plugin: str, command: str, elapsed: float, ok: bool) -> None:
        seconds.labels(plugin, command, "true" if ok else "false").observe(elapsed)

    exec_.observer = observe
