"""CRI `PodSandboxStatus`: the pod, its containers' statuses, and with `verbose` the
free-form info map."""

from __future__ import annotations

import time

from crib_common.cri.runtime.v1 import PodSandboxStatusRequest, PodSandboxStatusResponse
from crib_common.server import CriTable

from ..daemon import Runtimed
from ..messages.listing import sandbox_status_reply
from ..messages.status import container_status, sandbox_info, sandbox_status


def register(table: CriTable, runtimed: Runtimed) -> None:
    node = runtimed.node

    @table.unary("/runtime.v1.RuntimeService/PodSandboxStatus", PodSandboxStatusRequest)
    async def pod_sandbox_status(
        request: PodSandboxStatusRequest,
    ) -> PodSandboxStatusResponse | bytes:
        rec = node.find_sandbox(request.pod_sandbox_id)
        containers = node.pod_containers(rec.meta.id)
        if not request.verbose:
            # Pre-encoded, each status cached until it changes.
            return sandbox_status_reply(
                rec, [c for c in containers if c.status.state != "creating"], time.time_ns())
        return PodSandboxStatusResponse(
            status=sandbox_status(rec),
            info=sandbox_info(rec, [c.meta.id for c in containers]),
            containers_statuses=[container_status(c) for c in containers
                                 if c.status.state != "creating"],
            timestamp=time.time_ns(),
        )
