"""CRI `Attach`: validate the request and hand back a one-time streaming URL.

The client is wired to the container's stdio through conmon's attach socket when it
connects (`runtimed.streaming.attach`); detaching leaves the container running.
"""

from __future__ import annotations

import structlog

from crib_common.cri.runtime.v1 import AttachRequest, AttachResponse
from crib_common.errors import FailedPrecondition, InvalidArgument
from crib_common.server import CriTable

from ..streaming import AttachSpec, StreamServer
from .container_exec import check_stdio

log = structlog.get_logger("runtimed.cri")


def register(table: CriTable, server: StreamServer) -> None:
    @table.unary("/runtime.v1.RuntimeService/Attach", AttachRequest)
    async def attach(request: AttachRequest) -> AttachResponse:
        spec = await _prepare(request, server)
        url = server.url(spec)
        log.info("attach prepared", container=spec.container_id, tty=spec.tty)
        return AttachResponse(url=url)


async def _prepare(request: AttachRequest, server: StreamServer) -> AttachSpec:
    if not request.container_id:
        raise InvalidArgument("container_id is required")
    check_stdio(request.stdin, request.stdout, request.stderr, request.tty)
    target = await server.targets.container_target(request.container_id)
    if not target.running:
        raise FailedPrecondition(f"container {target.id} is not running")
    # api.proto: tty "must match the TTY setting in the ContainerConfig"; a mismatch would
    # read a terminal as multiplexed pipes or the other way round.
    if request.tty != target.tty:
        raise InvalidArgument(f"tty={request.tty} does not match container {target.id} "
                              f"(tty={target.tty})")
    if target.attach_socket is None:
        raise FailedPrecondition(f"container {target.id} has no attach socket")
    # A container created without stdin has no pipe for it in conmon: input is dropped
    # rather than refused, as a kubelet may ask for stdin on any `kubectl attach -i`.
    return AttachSpec(target.id, stdin=request.stdin and target.stdin, stdout=request.stdout,
                      stderr=request.stderr, tty=request.tty)
