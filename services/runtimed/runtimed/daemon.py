"""`Runtimed`: the centre (`node.Node`) and its rooms, built and started together.

    cri/<rpc>.py ──> Runtimed.{sandboxes, containers, exits, execs, sweeper}
                            │ each room drives
                            ▼
                          Node ──> runtimes (runc, crun) · monitor (conmon) · host ·
                                   imaged · netd · state store

`open` runs before the socket listens: probe handlers, recover, watch exits, start the
sweep. `close` stops them and leaves every container running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import structlog

from crib_common.clients.imaged import ImagedClient
from crib_common.clients.netd import NetdClient
from crib_common.settings import CribSettings

from .cgroups import check_cgroup_driver, check_monitor_cgroup, runtime_global_args
from .cgroups.monitor import in_cgroup_namespace
from .conmon.monitor import Conmon, Monitor
from .host import LinuxHost
from .lifecycle.containers import Containers
from .lifecycle.execsync import ExecSync
from .lifecycle.exits import Exits
from .lifecycle.recovery import recover
from .lifecycle.sandboxes import Sandboxes
from .lifecycle.sweep import Sweeper
from .node import Node
from .oci.runtime import OciRuntime, RuntimeImpl, check_hybrid_cgroups
from .oom import oom_policy
from .parking import Parking
from .ports import Host, ImagedPeer, NetdPeer

__all__ = ["Runtimed"]

log = structlog.get_logger("crib.runtimed")


class Runtimed:
    """Everything runtimed runs, wired once."""

    def __init__(self, settings: CribSettings, *, runtimes: dict[str, RuntimeImpl] | None = None,
                 monitor: Monitor | None = None, host: Host | None = None,
                 imaged: ImagedPeer | None = None, netd: NetdPeer | None = None) -> None:
        cfg = settings.runtimed
        # Before anything is made: the systemd driver without systemd as PID 1 would fail
        # every container create; refuse to start instead (FailedPrecondition, the
        # message names the setting).
        check_cgroup_driver(cfg.cgroup_driver)
        check_monitor_cgroup(cfg.monitor_cgroup, cfg.cgroup_driver)
        if in_cgroup_namespace():
            log.warning("runtimed runs in a cgroup namespace: pods and monitors are placed "
                        "inside its own container's cgroup and die when it is stopped; "
                        "run it with the host's cgroup namespace (cgroupns=host)")
        if runtimes is None:
            # runc and crun take --systemd-cgroup before the subcommand; conmon gets the
            # same list as --runtime-arg (OciRuntime.global_args).
            runtimes = {name: OciRuntime(name=name, path=h.path,
                                         root=h.root or cfg.run_dir / "rt" / name,
                                         extra=runtime_global_args(cfg.cgroup_driver))
                        for name, h in cfg.handlers.items()}
        host = host or LinuxHost()
        self.node = Node(settings, runtimes=runtimes,
                         monitor=monitor or Conmon(join=host.join_cgroup), host=host,
                         imaged=imaged or ImagedClient(settings.imaged.socket),
                         netd=netd or NetdClient(settings.netd.socket))
        self.exits = Exits(self.node)
        self.containers = Containers(self.node, self.exits)
        self.sandboxes = Sandboxes(self.node, self.containers)
        self.execs = ExecSync(self.node)
        self.sweeper = Sweeper(self.node)
        self.parking = Parking()
        self.ready = False
        self._sweeping: asyncio.Task[None] | None = None

    async def open(self, *, probe: bool = True) -> None:
        """Probe handlers, recover state, start watching exits and sweeping."""
        node = self.node
        for d in node.directories():
            d.mkdir(parents=True, exist_ok=True)
        if probe:
            await self._probe_handlers()
        await recover(node, self.sandboxes, self.containers, self.exits)
        await self.exits.start()
        node.sweep_wanted.set()  # the first sweep right after start
        self._sweeping = asyncio.create_task(self.sweeper.loop())
        self.ready = True

    async def _probe_handlers(self) -> None:
        for rt in self.node.runtimes.values():
            await rt.probe()
            if rt.usable and os.path.basename(rt.path).startswith("crun"):
                ok, message = await asyncio.to_thread(check_hybrid_cgroups)
                if not ok:
                    rt.usable, rt.reason = False, message
                    log.error("crun not usable", handler=rt.name, reason=message)
                else:
                    log.info("cgroup check", handler=rt.name, result=message)
            if not rt.usable:
                log.error("runtime handler not usable", handler=rt.name, reason=rt.reason)

    async def close(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeping
        await self.containers.close()
        await self.exits.close()
        await self.node.imaged.close()
        await self.node.netd.close()
        self.node.store.close()

    def health(self) -> tuple[bool, str, str, dict[str, Any]]:
        return self.node.health()

    def cgroup_info(self) -> dict[str, Any]:
        """The cgroup mode, the driver and the OOM score policy, for /healthz and
        `crib status`."""
        info = dict(self.node.host.describe_cgroups())
        info["driver"] = self.node.cfg.cgroup_driver
        info["oom_score_adj"] = oom_policy().describe()
        return info
