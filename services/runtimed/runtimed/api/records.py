"""`GET /v1/sandboxes[/{id}]`, `GET /v1/containers[/{id}]`: runtimed's records as stored
(metadata and status), for operators and `crib`; IDs may be unique prefixes.
`POST /v1/sweep`: run the orphan sweep now (`crib sweep`)."""

from __future__ import annotations

from aiohttp import web

from crib_common.models.base import JsonModel
from crib_common.server import RouteTable, json_response

from ..daemon import Runtimed
from ..store.records import ContainerRecord, SandboxRecord


class SweepReport(JsonModel):
    """What a sweep removed, by kind, and whether netd and imaged both answered (if not,
    what they hold is swept once they do)."""

    peers_answered: bool
    removed: dict[str, int]


def register(routes: RouteTable, runtimed: Runtimed) -> None:
    node = runtimed.node

    @routes.route("GET", "/v1/sandboxes", "Every pod sandbox record",
                  response=SandboxRecord, response_list=True)
    async def list_sandboxes(_request: web.Request) -> web.Response:
        return json_response(list(node.sandboxes.values()))

    @routes.route("GET", "/v1/sandboxes/{id}", "One pod sandbox record (ID or unique prefix)",
                  response=SandboxRecord)
    async def get_sandbox(request: web.Request) -> web.Response:
        return json_response(node.find_sandbox(request.match_info["id"]))

    @routes.route("GET", "/v1/containers", "Every container record (optionally of one pod)",
                  response=ContainerRecord, response_list=True, query={"pod": "pod ID prefix"})
    async def list_containers(request: web.Request) -> web.Response:
        pod = request.query.get("pod", "")
        return json_response([c for c in node.containers.values()
                              if c.meta.pod_id.startswith(pod)])

    @routes.route("GET", "/v1/containers/{id}", "One container record (ID or unique prefix)",
                  response=ContainerRecord)
    async def get_container(request: web.Request) -> web.Response:
        return json_response(node.find_container(request.match_info["id"]))

    @routes.route("POST", "/v1/sweep", "Remove now the networks, snapshots and directories "
                  "left for pods and containers without a record", response=SweepReport)
    async def sweep(_request: web.Request) -> web.Response:
        clean, removed = await runtimed.sweeper.sweep()
        return json_response(SweepReport(peers_answered=clean, removed=removed))
