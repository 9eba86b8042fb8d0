"""Recovery at start, before the socket listens: reload every record and settle it
against the world (containerd's restart.go, CRI-O's restore).

What may have changed while runtimed was down (see `store.records`): containers exited
(the monitor wrote exit files), monitors died, the runtime's state may be gone, mounts
may be gone. Per record, under its own timeout:

    container creating  ──> rolled back, dropped (a create killed half-way)
    container created/running ──exit file──> exited
                              (a live monitor of an older runtimed, still in runtimed's
                               cgroup, is moved into its own: `cgroups.monitor`)
                              ──monitor alive, runtime says running──> running
                              ──monitor gone, no exit file──> exited (255, message)
                              ──cannot tell──> unknown
    sandbox creating    ──> its containers and itself rolled back, dropped
    sandbox ready, infra gone ──> notready
    sandbox ready, a pinned namespace gone ──> notready (`lifecycle.pins`)
    release queued by RemoveContainer ──> torn down, forgotten

Then bundles and exit files that no record names are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil

import structlog

from ..cgroups import monitor_cgroup
from ..node import Node, now
from ..store.records import ContainerRecord, SandboxRecord
from .containers import Containers
from .exits import LOST_MESSAGE, LOST_REASON, Exits
from .pins import check_pins
from .sandboxes import Sandboxes
from .undo import rollback

__all__ = ["recover"]

log = structlog.get_logger("crib.runtimed")

# Per-record bounds: one stuck runtime call must not keep runtimed from starting.
CONTAINER_TIMEOUT = 30.0
SANDBOX_TIMEOUT = 60.0
# How long start waits for queued container releases before it goes on without them.
RELEASE_WAIT = 5.0


async def recover(node: Node, sandboxes: Sandboxes, containers: Containers,
                  exits: Exits) -> None:
    pods, ctrs = node.load()
    # Containers removed before the crash whose release was still queued: given a
    # moment here, then they go on in the background (a peer may still be starting;
    # they retry).
    await containers.finish_releases(wait=RELEASE_WAIT)
    for c in ctrs:
        try:
            async with asyncio.timeout(CONTAINER_TIMEOUT):
                await _container(node, containers, exits, c)
        except Exception:
            log.exception("container recovery failed", container=c.meta.id)
            if c.status.state != "creating":
                c.status.state = "unknown"
                with contextlib.suppress(Exception):
                    node.put_container(c)
    for s in pods:
        try:
            async with asyncio.timeout(SANDBOX_TIMEOUT):
                await _sandbox(node, sandboxes, containers, s)
        except Exception:
            log.exception("sandbox recovery failed", pod=s.meta.id)
    known = set(node.containers) | set(node.sandboxes)
    for entry in list(os.scandir(node.bundles)):
        if entry.name not in node.containers:
            log.warning("removing orphaned bundle", bundle=entry.path)
            with contextlib.suppress(OSError):
                node.host.unmount_under(entry.path)
            shutil.rmtree(entry.path, ignore_errors=True)
    for entry in list(os.scandir(node.exit_dir)):
        if entry.name not in known:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
    log.info("recovered", pods=len(node.sandboxes), containers=len(node.containers))


async def _container(node: Node, containers: Containers, exits: Exits,
                     c: ContainerRecord) -> None:
    if c.status.state == "creating":
        log.warning("rolling back half-done create", container=c.meta.id)
        await rollback(node, containers.teardown, c)
        node.drop_container(c.meta.id)
        return
    if c.status.state == "exited":
        return
    if await exits.settle(c):
        return
    rt = node.runtimes.get(c.meta.handler)
    st = await rt.state(c.meta.id) if rt is not None else None
    status = (st or {}).get("status", "")
    if node.monitor.alive(c.status.conmon_pid, c.status.conmon_started):
        await _place_old_monitor(node, c.meta.pod_id, c.status.conmon_pid, c)
        if status == "running" and c.status.state == "created":
            # Killed between `runtime start` and persisting "running".
            c.status.state = "running"
            c.status.started_at = c.status.started_at or now()
            node.put_container(c)
        exits.watch(c)
        return
    # The monitor is gone and left no exit file: the exit code is lost.
    if status in ("stopped", "") or st is None:
        await exits.settle(c, fallback_code=255, message=LOST_MESSAGE, reason=LOST_REASON)
    elif status == "running" and c.status.state == "running" and node.monitor.alive(c.status.pid):
        # Still running without its monitor: recorded when its process ends.
        exits.watch(c)
    else:
        c.status.state = "unknown"
        node.put_container(c)


async def _sandbox(node: Node, sandboxes: Sandboxes, containers: Containers,
                   s: SandboxRecord) -> None:
    if s.status.state == "creating":
        log.warning("rolling back half-done sandbox", pod=s.meta.id)
        for c in node.pod_containers(s.meta.id):
            await rollback(node, containers.teardown, c)
            node.drop_container(c.meta.id)
        await rollback(node, sandboxes.teardown, s)
        node.drop_sandbox(s.meta.id)
        return
    if s.status.state == "ready" and s.meta.has_infra and \
            not node.monitor.alive(s.status.infra_pid, s.status.infra_started):
        s.status.state = "notready"
        node.put_sandbox(s)
    if s.status.state == "ready":
        check_pins(node, s)
    if s.status.state == "ready" and s.meta.has_infra:
        await _place_old_monitor(node, s.meta.id, s.status.infra_conmon_pid, s)


async def _place_old_monitor(node: Node, pod_id: str, pid: int,
                             rec: ContainerRecord | SandboxRecord) -> None:
    """A monitor started before monitors had cgroups of their own still shares runtimed's
    cgroup, and would die with it: moved into its own now (conmon forked long ago; its one
    child, the container's process, is in the container's cgroup)."""
    if isinstance(rec, ContainerRecord):
        if rec.meta.monitor_cgroup:
            return
    elif rec.meta.infra_monitor_cgroup or not node.monitor.alive(pid):
        return
    pod = node.sandboxes.get(pod_id)
    if pod is None or pid <= 0:
        return
    path = monitor_cgroup(node.cfg.monitor_cgroup, pod.meta.cgroup_parent, rec.meta.id,
                          node.cfg.cgroup_driver)
    try:
        await asyncio.to_thread(node.host.join_cgroup, path, pid)
    except OSError as exc:
        log.warning("monitor not moved out of runtimed's cgroup", id=rec.meta.id,
                    cgroup=path, error=str(exc))
        return
    if isinstance(rec, ContainerRecord):
        rec.meta.monitor_cgroup = path
        node.put_container(rec)
    else:
        rec.meta.infra_monitor_cgroup = path
        node.put_sandbox(rec)
    log.info("monitor moved into its own cgroup", id=rec.meta.id, cgroup=path)
