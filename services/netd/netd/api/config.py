"""`/v1/config` and `/v1/gc`: the CNI configuration in force, and garbage collection."""

from __future__ import annotations

from aiohttp import web

from crib_common.models.netd import CniConfigView, GcReport
from crib_common.server import RouteTable, json_response

from ..manager import NetworkManager

__all__ = ["register"]


def register(routes: RouteTable, manager: NetworkManager) -> None:
    """Add the configuration routes to `routes`."""

    @routes.route("GET", "/v1/config",
                  "The active CNI configuration (first file of conf_dir), re-read now",
                  response=CniConfigView)
    async def config(request: web.Request) -> web.Response:
        return json_response(await manager.config_view())

    @routes.route("POST", "/v1/gc",
                  "Remove orphan namespaces; CNI GC with the live attachments (CNI 1.1 "
                  "plugins only)", response=GcReport)
    async def gc(request: web.Request) -> web.Response:
        return json_response(await manager.gc())
