"""`GET /v1/sandboxes[/{id}]`, `GET /v1/containers[/{id}]`: runtimed's records as stored
(metadata and status), for operators and `crib`; IDs may be unique prefixes."""

from __future__ import annotations

from aiohttp import web

from crib_common.server import RouteTable, json_response

from ..service import Runtime
from ..store.records import ContainerRecord, SandboxRecord


def register(routes: RouteTable, rt: Runtime) -> None:
    @routes.route("GET", "/v1/sandboxes", "Every pod sandbox record",
                  response=SandboxRecord, response_list=True)
    async def list_sandboxes(_request: web.Request) -> web.Response:
        return json_response(list(rt.sandboxes.values()))

    @routes.route("GET", "/v1/sandboxes/{id}", "One pod sandbox record (ID or unique prefix)",
                  response=SandboxRecord)
    async def get_sandbox(request: web.Request) -> web.Response:
        return json_response(rt.find_sandbox(request.match_info["id"]))

    @routes.route("GET", "/v1/containers", "Every container record (optionally of one pod)",
                  response=ContainerRecord, response_list=True, query={"pod": "pod ID prefix"})
    async def list_containers(request: web.Request) -> web.Response:
        pod = request.query.get("pod", "")
        return json_response([c for c in rt.containers.values()
                              if c.meta.pod_id.startswith(pod)])

    @routes.route("GET", "/v1/containers/{id}", "One container record (ID or unique prefix)",
                  response=ContainerRecord)
    async def get_container(request: web.Request) -> web.Response:
        return json_response(rt.find_container(request.match_info["id"]))
