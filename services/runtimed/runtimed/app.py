"""create_app(settings): runtimed's routes, CRI methods and resources."""

from __future__ import annotations

from aiohttp import web

from crib_common.server import CriTable, Health, RouteTable, create_daemon_app
from crib_common.settings import CribSettings

from .cri import runtime_version


def create_app(settings: CribSettings) -> web.Application:
    cri = CriTable()
    runtime_version.register(cri)
    routes = RouteTable()

    async def health() -> Health:
        return Health(service="runtimed")

    return create_daemon_app("runtimed", routes, cri, health)
