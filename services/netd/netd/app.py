"""create_app(settings): netd's routes, CRI methods and resources."""

from __future__ import annotations

from aiohttp import web

from crib_common.server import CriTable, Health, RouteTable, create_daemon_app
from crib_common.settings import CribSettings


def create_app(settings: CribSettings) -> web.Application:
    cri = CriTable()
    routes = RouteTable()

    async def health() -> Health:
        return Health(service="netd")

    return create_daemon_app("netd", routes, cri, health)
