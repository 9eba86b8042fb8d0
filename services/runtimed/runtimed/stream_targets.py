"""The streaming hook: look containers and sandboxes up by ID (full or unique prefix).

`RuntimeTargets(runtimed)` satisfies `streaming.targets.StreamTargets`; `container_handle`
gives everything a process-level helper needs (runtime binary and root, pid, bundle,
conmon's attach socket and control FIFO, the sandbox's netns).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from crib_common.errors import NotFound

from .daemon import Runtimed
from .node import Node
from .streaming.targets import ContainerTarget, SandboxTarget

__all__ = ["ContainerHandle", "RuntimeTargets", "container_handle"]


@dataclass(frozen=True)
class ContainerHandle:
    id: str
    state: str
    runtime_path: str
    runtime_root: Path
    runtime_args: tuple[str, ...]
    pid: int
    bundle: Path
    attach_socket: Path  # conmon binds it in the bundle (reached via <socket-dir>/<id>)
    ctl_fifo: Path
    winsz_fifo: Path
    netns_path: str
    tty: bool
    stdin: bool


def container_handle(node: Node, container_id: str) -> ContainerHandle:
    """NotFound (or InvalidArgument for an ambiguous prefix) when there is no such one."""
    rec = node.find_container(container_id)
    if rec.status.state == "creating":
        raise NotFound(f"container {container_id!r} not found")
    runtime = node.runtimes[rec.meta.handler]
    pod = node.sandboxes.get(rec.meta.pod_id)
    bundle = Path(rec.meta.bundle)
    return ContainerHandle(
        id=rec.meta.id, state=rec.status.state, runtime_path=runtime.path,
        runtime_root=runtime.root, runtime_args=tuple(runtime.global_args()),
        pid=rec.status.pid, bundle=bundle, attach_socket=bundle / "attach",
        ctl_fifo=bundle / "ctl", winsz_fifo=bundle / "winsz",
        netns_path=pod.meta.netns_path if pod else "", tty=rec.meta.tty, stdin=rec.meta.stdin,
    )


class RuntimeTargets:
    """`StreamTargets` over runtimed's records."""

    def __init__(self, runtimed: Runtimed) -> None:
        self.node = runtimed.node
        self.exits = runtimed.exits

    async def container_target(self, container_id: str) -> ContainerTarget:
        h = container_handle(self.node, container_id)
        return ContainerTarget(id=h.id, running=h.state == "running",
                               runtime_path=h.runtime_path, runtime_root=h.runtime_root,
                               tty=h.tty, stdin=h.stdin, attach_socket=h.attach_socket,
                               ctl_fifo=h.ctl_fifo)

    async def sandbox_target(self, sandbox_id: str) -> SandboxTarget:
        rec = self.node.find_sandbox(sandbox_id)
        return SandboxTarget(id=rec.meta.id, ready=rec.status.state == "ready",
                             netns_path=Path(rec.meta.netns_path) if rec.meta.netns_path
                             else None)

    async def container_exit_code(self, container_id: str, timeout: float) -> int | None:
        end = time.monotonic() + timeout
        while True:
            try:
                rec = self.node.find_container(container_id)
            except NotFound:
                return None
            if rec.status.state == "exited":
                return rec.status.exit_code
            if await self.exits.settle(rec):
                return rec.status.exit_code
            if time.monotonic() >= end:
                return None
            await asyncio.sleep(0.05)
