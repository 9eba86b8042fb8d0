"""CRI `CreateContainer`: snapshot from imaged, config.json, conmon + `<runtime> create`."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import CreateContainerRequest, CreateContainerResponse
from crib_common.errors import InvalidArgument
from crib_common.server import CriTable

from ..oci.spec import is_set
from ..service import Runtime


def register(table: CriTable, rt: Runtime) -> None:
    @table.unary("/runtime.v1.RuntimeService/CreateContainer", CreateContainerRequest)
    async def create_container(request: CreateContainerRequest) -> CreateContainerResponse:
        if not is_set(request.config):
            raise InvalidArgument("CreateContainer needs a config")
        cid = await rt.create_container(
            request.pod_sandbox_id, request.config,
            request.sandbox_config if is_set(request.sandbox_config) else None)
        return CreateContainerResponse(container_id=cid)
