"""CRI `Exec`: validate the request and hand back a one-time streaming URL.

The command itself runs when the client connects (`runtimed.streaming.exec`); the URL is
good once, for `stream_url_ttl` seconds (kubelet `cri/streaming/server.go` `GetExec`).
"""

from __future__ import annotations

import structlog

from crib_common.cri.runtime.v1 import ExecRequest, ExecResponse
from crib_common.errors import FailedPrecondition, InvalidArgument
from crib_common.server import CriTable

from ..streaming import ExecSpec, StreamServer

log = structlog.get_logger("runtimed.cri")


def register(table: CriTable, server: StreamServer) -> None:
    @table.unary("/runtime.v1.RuntimeService/Exec", ExecRequest)
    async def exec_(request: ExecRequest) -> ExecResponse:
        spec = await _prepare(request, server)
        url = server.url(spec)
        log.info("exec prepared", container=spec.container_id, tty=spec.tty,
                 stdin=spec.stdin)
        return ExecResponse(url=url)


async def _prepare(request: ExecRequest, server: StreamServer) -> ExecSpec:
    if not request.container_id:
        raise InvalidArgument("container_id is required")
    if not request.cmd:
        raise InvalidArgument("cmd is required")
    check_stdio(request.stdin, request.stdout, request.stderr, request.tty)
    target = await server.targets.container_target(request.container_id)
    if not target.running:
        raise FailedPrecondition(f"container {target.id} is not running")
    return ExecSpec(target.id, tuple(request.cmd), stdin=request.stdin, stdout=request.stdout,
                    stderr=request.stderr, tty=request.tty)


def check_stdio(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> None:
    """api.proto: one of stdin, stdout, stderr MUST be true; with tty, stderr MUST be false
    (the terminal merges both outputs)."""
    if not (stdin or stdout or stderr):
        raise InvalidArgument("one of stdin, stdout, or stderr must be set")
    if tty and stderr:
        raise InvalidArgument("tty and stderr cannot both be true")
