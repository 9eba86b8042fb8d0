"""`GET /v1/nri/plugins`: the NRI plugins connected now, in the order they are called."""

from __future__ import annotations

from aiohttp import web

from crib_common.models.base import JsonModel
from crib_common.server import RouteTable, json_response

from ..daemon import Runtimed


class NriPlugin(JsonModel):
    """One active plugin: `<index>-<name>`, external or started by runtimed, its pid and
    the events it subscribed to."""

    id: str
    name: str
    index: str
    kind: str
    pid: int
    events: list[str]


class NriStatus(JsonModel):
    enabled: bool
    socket: str
    plugins: list[NriPlugin]


def register(routes: RouteTable, runtimed: Runtimed) -> None:
    nri = runtimed.node.nri

    @routes.route("GET", "/v1/nri/plugins", "NRI: the socket and the plugins connected, "
                  "in call order", response=NriStatus)
    async def plugins(_request: web.Request) -> web.Response:
        return json_response(NriStatus(
            enabled=nri.cfg.enable, socket=str(nri.cfg.socket),
            plugins=[NriPlugin(**p) for p in nri.describe()]))
