"""The orphan sweep: what netd, imaged and the host still hold for pods and containers
runtimed has no record of (networks, snapshots, directories, and the empty cgroups made
for monitors, `cgroups.monitor`).

A create rolled back while netd or imaged was down drops its record but not the network
or snapshot it made there. A record is always written before the work it covers, so
anything being made right now is known and left alone; anything without a record is
nobody's and goes. Runs at start, every `reconcile_interval`, soon after a failed
rollback (`Node.sweep_wanted`), and on demand (`POST /v1/sweep`, `crib sweep`).

    idle ──interval or wanted──> sweeping ──both peers answered──> idle
                                     └──a peer down──> retry with a growing pause
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from crib_common.errors import CribError

from .. import cgroups
from ..node import ID_LEN, Node
from .containers import RELEASE_KIND

__all__ = ["Sweeper"]

log = structlog.get_logger("crib.runtimed")


class Sweeper:
    """Finds and removes orphans; `loop` runs it in the background."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def _container_owns(self, cid: str) -> bool:
        """A container record, or a removed container whose release is queued: it still
        owns its snapshot and bundle until the release runs (a snapshot taken from under
        its mounted rootfs would pull the overlay's upper directory from under the
        kernel). Asked at each check, memory first: RemoveContainer writes the release
        record before it drops the container, so no moment shows neither."""
        return cid in self.node.containers or cid in self.node.store.keys(RELEASE_KIND)

    async def loop(self) -> None:
        """Sweep every `reconcile_interval` seconds, or soon after a failed rollback;
        while a peer is unreachable, try again with a growing pause."""
        node = self.node
        retry = 0
        while True:
            wait = node.cfg.reconcile_interval if not retry else min(
                2.0 ** retry, node.cfg.reconcile_interval)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await node.sweep_wanted.wait()
            node.sweep_wanted.clear()
            try:
                clean, _ = await self.sweep()
            except Exception:
                log.exception("reconcile failed")
                clean = False
            retry = 0 if clean else retry + 1

    async def sweep(self) -> tuple[bool, dict[str, int]]:
        """One pass. Returns whether both peers answered, and what went, by kind."""
        node = self.node
        nets_ok, nets = await _sweep_peer(
            "network", node.netd.list_pod_networks,
            lambda n: n.pod_id if len(n.pod_id) == ID_LEN and n.pod_id not in node.sandboxes
            else None,
            node.netd.remove_pod_network)
        snaps_ok, snaps = await _sweep_peer(
            "snapshot", node.imaged.list_snapshots,
            lambda snap: snap.key if self._orphan_snapshot(snap.labels) else None,
            node.imaged.remove_snapshot)
        removed = {"networks": nets, "snapshots": snaps}
        removed["directories"] = await asyncio.to_thread(self._sweep_directories)
        removed["monitor_cgroups"] = await asyncio.to_thread(self._sweep_monitor_cgroups)
        removed = {k: v for k, v in removed.items() if v}
        if removed:
            log.warning("orphans removed", **removed)
        return nets_ok and snaps_ok, removed

    def _orphan_snapshot(self, labels: dict[str, str]) -> bool:
        """A snapshot runtimed made (its labels say for what) for a container or pod
        without a record."""
        cid = labels.get("io.crib.container", "")
        if cid:
            return not self._container_owns(cid)
        pod_id = labels.get("io.crib.pod", "")
        return bool(pod_id and labels.get("io.crib.infra")) and pod_id not in self.node.sandboxes

    def _sweep_directories(self) -> int:
        """Pod directories, namespace pins, container bundles, and the monitors' socket
        links and exit files, without a record."""
        node = self.node

        def pod(oid: str) -> bool:
            return oid in node.sandboxes

        def any_owner(oid: str) -> bool:
            return pod(oid) or self._container_owns(oid)

        count = 0
        for base, owned, undo in (
                (node.pods_dir, pod, None),
                (Path(node.cfg.pinns_dir), pod, node.host.unpin_namespaces),
                (node.bundles, self._container_owns, None),
                (node.sock_dir, any_owner, _unlink),
                (node.exit_dir, any_owner, _unlink)):
            try:
                entries = list(os.scandir(base))
            except OSError:
                continue
            for entry in entries:
                if len(entry.name) != ID_LEN or owned(entry.name):
                    continue
                try:
                    if undo is not None:
                        undo(Path(entry.path))
                    else:
                        node.host.unmount_under(entry.path)
                        shutil.rmtree(entry.path, ignore_errors=True)
                    count += 1
                except OSError as exc:
                    log.warning("orphan directory not removed", path=entry.path,
                                error=str(exc))
        return count


    def _monitor_parents(self) -> set[str]:
        """Where monitor cgroups are made: the named parent, and with "pod" the parent of
        every known pod (and of pods of an earlier setting: monitors recorded)."""
        node = self.node
        parents = {posixpath.dirname(c.meta.monitor_cgroup)
                   for c in node.containers.values() if c.meta.monitor_cgroup}
        parents |= {posixpath.dirname(s.meta.infra_monitor_cgroup)
                    for s in node.sandboxes.values() if s.meta.infra_monitor_cgroup}
        if node.cfg.monitor_cgroup == cgroups.MONITOR_POD:
            parents |= {s.meta.pod_cgroup for s in node.sandboxes.values() if s.meta.pod_cgroup}
        else:
            parents.add(posixpath.dirname(cgroups.monitor_cgroup(
                node.cfg.monitor_cgroup, "", "x", node.cfg.cgroup_driver)))
        return {p for p in parents if p.strip("/")}

    def _sweep_monitor_cgroups(self) -> int:
        """Monitor cgroups ("crib-conmon-<id>") whose container or pod has no record. Only
        empty ones go: rmdir refuses a cgroup with a task in it, so a monitor still
        running (of a container being created right now, its record just written) is
        never touched."""
        node = self.node
        count = 0
        for parent in sorted(self._monitor_parents()):
            for name in node.host.cgroup_children(parent):
                oid = cgroups.monitor_id(name)
                if len(oid) != ID_LEN or oid in node.sandboxes or self._container_owns(oid):
                    continue
                left = node.host.remove_cgroup(f"{parent.rstrip('/')}/{name}")
                if left:
                    log.warning("orphan monitor cgroup not removed", cgroups=left)
                else:
                    count += 1
        return count


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


async def _sweep_peer(what: str, listing: Callable[[], Awaitable[list[Any]]],
                      orphan: Callable[[Any], str | None],
                      remove: Callable[[str], Awaitable[None]]) -> tuple[bool, int]:
    """Remove what a peer lists and `orphan` names; (the peer answered throughout, how
    many went)."""
    try:
        items = await listing()
    except CribError as exc:
        log.debug("reconcile: peer not reachable", what=what, error=exc.message)
        return False, 0
    clean, count = True, 0
    for item in items:
        key = orphan(item)
        if key is None:
            continue
        try:
            await remove(key)
            count += 1
        except CribError as exc:
            log.warning("orphan not removed", what=what, key=key, error=exc.message)
            clean = False
    return clean, count
