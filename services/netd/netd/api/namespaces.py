"""`/v1/namespaces`: the pinned network namespaces under netns_dir."""

from __future__ import annotations

from aiohttp import web

from crib_common.models.netd import NetworkNamespace
from crib_common.server import RouteTable, json_response

from ..manager import NetworkManager

__all__ = ["register"]


def register(routes: RouteTable, manager: NetworkManager) -> None:
    """Add the namespace routes to `routes`."""

    @routes.route("GET", "/v1/namespaces", "List crib's pinned network namespaces",
                  response=NetworkNamespace, response_list=True)
    async def list_(request: web.Request) -> web.Response:
        return json_response(manager.list_namespaces())
