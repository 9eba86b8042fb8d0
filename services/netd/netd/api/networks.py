"""`/v1/networks`: pod attachments (used by runtimed, shown by `crib net`)."""

from __future__ import annotations

from aiohttp import web

from crib_common.models.netd import PodNetwork, PodNetworkCreate
from crib_common.server import RouteTable, json_response, parse_body

from ..manager import NetworkManager

__all__ = ["register"]


def register(routes: RouteTable, manager: NetworkManager) -> None:
    """Add the attachment routes to `routes`."""

    @routes.route("POST", "/v1/networks",
                  "Create the pod's pinned namespace and attach it (CNI ADD); idempotent",
                  request=PodNetworkCreate, response=PodNetwork)
    async def create(request: web.Request) -> web.Response:
        body = await parse_body(request, PodNetworkCreate)
        return json_response(await manager.create(body))

    @routes.route("GET", "/v1/networks", "List pod attachments with their IPs",
                  response=PodNetwork, response_list=True)
    async def list_(request: web.Request) -> web.Response:
        return json_response(manager.list_networks())

    @routes.route("GET", "/v1/networks/{pod_id}", "One pod's namespace and attachment",
                  response=PodNetwork)
    async def get(request: web.Request) -> web.Response:
        return json_response(manager.get(request.match_info["pod_id"]))

    @routes.route("POST", "/v1/networks/{pod_id}/check",
                  "CNI CHECK with the configuration and result of the ADD")
    async def check(request: web.Request) -> web.Response:
        await manager.check(request.match_info["pod_id"])
        return web.json_response({})

    @routes.route("DELETE", "/v1/networks/{pod_id}",
                  "CNI DEL (reverse order) and remove the namespace; unknown is success")
    async def delete(request: web.Request) -> web.Response:
        await manager.remove(request.match_info["pod_id"])
        return web.Response(status=204)
