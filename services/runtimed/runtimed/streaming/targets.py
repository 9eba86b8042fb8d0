"""What the streaming server needs from the rest of runtimed, as a small Protocol.

The server does not know how containers are stored or started; runtimed hands it an object
satisfying `StreamTargets` (CRI-O keeps the same cut: its streaming server calls back into
`StreamService.Exec/Attach/PortForward`). Unknown IDs raise `crib_common.errors.NotFound`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["ContainerTarget", "SandboxTarget", "StreamTargets"]


@dataclass(frozen=True)
class ContainerTarget:
    """A container as exec and attach see it.

    `runtime_path`/`runtime_root` are the OCI runtime binary and its `--root`, and
    `runtime_args` any further global options the handler runs with (not `--root`);
    `attach_socket` is conmon's SOCK_SEQPACKET attach socket and `ctl_fifo` its control FIFO
    (conmon `src/conn_sock.c`, `src/ctrl.c`); `tty`/`stdin` are the container's own
    ContainerConfig flags (attach must match them).
    """

    id: str
    running: bool
    runtime_path: str
    runtime_root: Path
    tty: bool = False
    stdin: bool = False
    attach_socket: Path | None = None
    ctl_fifo: Path | None = None
    runtime_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class SandboxTarget:
    """A pod sandbox as port forwarding sees it: where its network namespace is."""

    id: str
    ready: bool
    netns_path: Path | None


@runtime_checkable
class StreamTargets(Protocol):
    """Resolves CRI IDs (full or unique prefix) for the streaming server."""

    async def container_target(self, container_id: str) -> ContainerTarget:
        """The container, or NotFound."""
        ...

    async def sandbox_target(self, sandbox_id: str) -> SandboxTarget:
        """The pod sandbox, or NotFound."""
        ...

    async def container_exit_code(self, container_id: str, timeout: float) -> int | None:
        """The exit code once the container has exited (waiting up to `timeout`), else None."""
        ...
