"""Driving a real `Runtimed` over fakes (`fakes.Fakes`) through its CRI handlers, as the
gateway would, minus the wire: settings under the test's tmp dir, the cri/ modules
registered on a `CriTable`, and builders for the requests the lifecycle tests send."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import betterproto

from crib_common.cri.runtime.v1 import (
    ContainerConfig,
    ContainerStatusResponse,
    ContainerMetadata,
    CreateContainerRequest,
    ImageSpec,
    LinuxContainerResources,
    LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext,
    Mount,
    NamespaceMode,
    NamespaceOption,
    PodSandboxConfig,
    PodSandboxMetadata,
    PodSandboxStatusResponse,
    RunPodSandboxRequest,
)
from crib_common.server import CriTable
from crib_common.settings import CribSettings, load_settings
from runtimed.cri import (
    container_create,
    container_remove,
    container_start,
    container_status,
    container_stop,
    sandbox_remove,
    sandbox_run,
    sandbox_status,
    sandbox_stop,
)
from runtimed.daemon import Runtimed

from .fakes import BUSYBOX, Fakes

__all__ = ["Daemon", "container_request", "eventually", "make_settings", "pod_request",
           "steps_of"]

_RUNTIME = "/runtime.v1.RuntimeService/"
# The RPCs whose handlers answer pre-encoded bytes, and their reply types.
_REPLIES: dict[str, type[betterproto.Message]] = {
    "ContainerStatus": ContainerStatusResponse,
    "PodSandboxStatus": PodSandboxStatusResponse,
}
_MODULES = (sandbox_run, sandbox_stop, sandbox_remove, sandbox_status, container_create,
            container_start, container_stop, container_remove, container_status)


def make_settings(tmp_path: Path, **runtimed: Any) -> CribSettings:
    return load_settings(runtimed={
        "root": str(tmp_path / "lib"), "run_dir": str(tmp_path / "run"),
        "pinns_dir": str(tmp_path / "ns"), "default_handler": "runc",
        "handlers": {"runc": {"path": "/fake/bin/runc"}}, **runtimed})


class Daemon:
    """One `Runtimed` over `fakes`, opened; `call` runs a CRI handler as registered."""

    def __init__(self, settings: CribSettings, fakes: Fakes) -> None:
        self.fakes = fakes
        self.runtimed = Runtimed(settings, **fakes.parts())
        self.node = self.runtimed.node
        self.table = CriTable()
        for module in _MODULES:
            module.register(self.table, self.runtimed)
        # Orphan sweeps begun and finished: a rollback must leave nothing on its own, so
        # the tests check that no sweep ran in between.
        self.sweeps_begun = self.sweeps_done = 0
        sweep = self.runtimed.sweeper.sweep

        async def counted() -> tuple[bool, dict[str, int]]:
            self.sweeps_begun += 1
            try:
                return await sweep()
            finally:
                self.sweeps_done += 1

        self.runtimed.sweeper.sweep = counted  # type: ignore[method-assign]

    @classmethod
    async def open(cls, settings: CribSettings, fakes: Fakes) -> Daemon:
        daemon = cls(settings, fakes)
        await daemon.runtimed.open(probe=False)
        return daemon

    async def settle_sweep(self) -> None:
        """Wait for the sweep `open` starts to finish its first pass."""
        await eventually(lambda: self.sweeps_done >= 1)

    async def call(self, rpc: str, request: Any) -> Any:
        """The handler's answer as a message (some answer pre-encoded bytes, which are
        parsed with the RPC's reply type, as the kubelet would)."""
        method = self.table.methods[_RUNTIME + rpc]
        reply = await method.handler(request)
        if rpc == "RemoveContainer":
            # It answers once the container is gone from every list; what it held is
            # released in the background right after. The tests check the whole release.
            await self.runtimed.containers.released()
        if isinstance(reply, bytes):
            return _REPLIES[rpc]().parse(reply)
        return reply

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.runtimed.close()

    def leftovers(self) -> dict[str, Any]:
        return self.fakes.leftovers(self.node)

    def no_sweep_since(self, begun: int) -> bool:
        """No orphan sweep began since `sweeps_begun` was `begun`, nor is one wanted."""
        return self.sweeps_begun == begun and not self.node.sweep_wanted.is_set()


def pod_request(name: str = "web", *, shared_pid: bool = False, cpu_shares: int = 512,
                log_directory: str = "") -> RunPodSandboxRequest:
    """A pod with its own network, IPC and UTS; PID shared (catatonit) when asked; pod
    resources and no cgroup parent of its own, so crib makes the pod cgroup and limits it
    (a kubelet's parent is the kubelet's to limit)."""
    return RunPodSandboxRequest(config=PodSandboxConfig(
        metadata=PodSandboxMetadata(name=name, namespace="default", uid=f"uid-{name}"),
        hostname=name, log_directory=log_directory,
        linux=LinuxPodSandboxConfig(
            security_context=LinuxSandboxSecurityContext(namespace_options=NamespaceOption(
                pid=NamespaceMode.POD if shared_pid else NamespaceMode.CONTAINER)),
            resources=LinuxContainerResources(cpu_shares=cpu_shares))))


def container_request(pod_id: str, pod: RunPodSandboxRequest, name: str = "app", *,
                      image_volume: bool = True) -> CreateContainerRequest:
    """busybox, with an image volume (a second snapshot and mount) unless told not to."""
    mounts = [Mount(container_path="/data", image=ImageSpec(image=BUSYBOX.repo_tags[0]),
                    readonly=True)] if image_volume else []
    return CreateContainerRequest(pod_sandbox_id=pod_id, sandbox_config=pod.config,
                                  config=ContainerConfig(
                                      metadata=ContainerMetadata(name=name),
                                      image=ImageSpec(image=BUSYBOX.repo_tags[0]),
                                      command=["sleep", "3600"], mounts=mounts))



def steps_of(calls: list[str]) -> list[tuple[str, int]]:
    """A call log as (step, n-th call of it): each entry is one step to fail in turn."""
    seen: Counter[str] = Counter()
    out = []
    for call in calls:
        seen[call] += 1
        out.append((call, seen[call]))
    return out


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 2.0) -> None:
    """Wait until `check()` (a function or a coroutine function) is true: the exit
    watcher and the runtime's delete after an exit work in the background."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout

    async def holds() -> bool:
        result = check()
        return bool(await result) if inspect.isawaitable(result) else bool(result)

    while not await holds():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)
