"""CRI `PortForward`: validate the request and hand back a one-time streaming URL.

Connections are made inside the pod's network namespace when the client opens them
(`runtimed.streaming.portforward`); the ports listed here are the default for WebSocket
clients that give none in the URL (SPDY clients name a port per stream).
"""

from __future__ import annotations

import structlog

from crib_common.cri.runtime.v1 import PortForwardRequest, PortForwardResponse
from crib_common.errors import FailedPrecondition, InvalidArgument
from crib_common.server import CriTable

from ..streaming import PortForwardSpec, StreamServer

log = structlog.get_logger("runtimed.cri")


def register(table: CriTable, server: StreamServer) -> None:
    @table.unary("/runtime.v1.RuntimeService/PortForward", PortForwardRequest)
    async def port_forward(request: PortForwardRequest) -> PortForwardResponse:
        spec = await _prepare(request, server)
        url = server.url(spec)
        log.info("port forward prepared", pod=spec.sandbox_id, ports=list(spec.ports))
        return PortForwardResponse(url=url)


async def _prepare(request: PortForwardRequest, server: StreamServer) -> PortForwardSpec:
    if not request.pod_sandbox_id:
        raise InvalidArgument("pod_sandbox_id is required")
    for port in request.port:
        if not 0 < port < 65536:
            raise InvalidArgument(f"invalid port {port}")
    target = await server.targets.sandbox_target(request.pod_sandbox_id)
    if not target.ready:
        raise FailedPrecondition(f"pod sandbox {target.id} is not ready")
    return PortForwardSpec(target.id, tuple(request.port))
