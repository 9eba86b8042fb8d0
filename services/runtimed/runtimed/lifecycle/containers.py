"""Containers: what CreateContainer sets up, StartContainer starts, StopContainer stops
and RemoveContainer takes away. The CRI modules (`cri/container_*.py`) check requests and
decide idempotency; this room does the work on records it is handed.

    creating ──setup──> created ──start──> running ──exit (lifecycle.exits)──> exited
        │                  └──────────exit before start──────────────────────┘   │
        └──a step failed, or found half-done at start──> teardown ──> (deleted) <──remove

Setup, in order, each step recorded before the next so a teardown knows what to undo: a
writable snapshot from imaged mounted as the rootfs; the user resolved from the image's
/etc/passwd and /etc/group; image volumes (`lifecycle.volumes`); config.json
(`oci.spec`); the monitor, which runs `<runtime> create`. Teardown: runtime delete
(unless the background delete at exit did it), the monitor killed, everything under the
bundle unmounted, snapshots removed, bundle, socket link and exit file removed.

RemoveContainer answers once the record is gone and its release is queued, as
containerd deletes its leftovers after answering: one transaction replaces the container
record with a release record (`RELEASE_KIND`, the same content), then the teardown runs
in the background and deletes the release record when done. A crash in between leaves
the release record, and recovery finishes it before runtimed listens (`finish_releases`);
a teardown that fails (imaged down) is retried with a growing pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import structlog

from crib_common.cri.runtime.v1 import (
    ContainerConfig,
    PodSandboxConfig,
    SeLinuxOption,
    SupplementalGroupsPolicy,
)
from crib_common.errors import CribError, DeadlineExceeded, FailedPrecondition
from crib_common.models.imaged import ImageInfo, SnapshotCreate

from ..bundle import write_config
from ..cgroups import container_cgroup, monitor_cgroup
from ..conmon.monitor import REOPEN_LOGS_EVENT, ConmonSpec
from ..node import Node, failpoint, new_id, now
from ..oci import security
from ..oci.runtime import RuntimeImpl, signal_number
from ..oci.spec import (
    ContainerSpecInput,
    build_container_spec,
    is_set,
    resources_to_dict,
    resources_to_oci,
)
from ..oci.user import resolve_user
from ..store.records import CONTAINER_KIND, ContainerMeta, ContainerRecord, SandboxRecord
from .exits import Exits
from .infra import KILL_WAIT, monitor_around
from .pins import check_pins, pins_lost_error
from .rootfs import map_mounts, mount_rootfs
from .undo import attempt, release_monitor, undone_on_failure, unmount_and_remove
from .volumes import mount_image_volumes, mount_record

__all__ = ["Containers", "RELEASE_KIND"]

log = structlog.get_logger("crib.runtimed")

# State-store kind of a removed container whose resources are still being released.
RELEASE_KIND = "container-release"
# Teardown attempts of one queued release before it is left for the next start, and the
# bound on each (runtime delete, unmounts, imaged's snapshot removal).
RELEASE_TRIES = 6
# How long after RemoveContainer answers its release starts (see `_release`).
RELEASE_DELAY = 0.005
RELEASE_TIMEOUT = 60.0


class Containers:
    """Creates, starts, stops and removes containers."""

    def __init__(self, node: Node, exits: Exits) -> None:
        self.node = node
        self.exits = exits
        # Queued releases under way: container id -> (pod id, the task).
        self._releasing: dict[str, tuple[str, asyncio.Task[None]]] = {}

    # ------------------------------------------------------------ create

    async def create(self, pod: SandboxRecord, config: ContainerConfig, image: ImageInfo,
                     rt: RuntimeImpl, log_path: str) -> str:
        """Reserve the name, persist a "creating" record, set up, mark created; on any
        failure the teardown runs and the record goes. Returns the new container's id."""
        node = self.node
        cid = new_id()
        bundle = node.bundles / cid
        metadata = config.metadata
        img_cfg = image.config.get("config") or {}
        stop_signal = img_cfg.get("StopSignal") or "SIGTERM"
        if config.stop_signal:
            stop_signal = config.stop_signal.name or stop_signal
        try:
            signal_number(stop_signal)
        except (ValueError, AttributeError):
            stop_signal = "SIGTERM"
        meta = ContainerMeta(
            id=cid, pod_id=pod.meta.id, name=metadata.name, attempt=metadata.attempt,
            handler=rt.name,
            created_at=now(), image=config.image.image, image_id=image.id,
            image_ref=(image.repo_digests[0] if image.repo_digests else image.id),
            labels=dict(config.labels), annotations=dict(config.annotations),
            log_path=log_path, bundle=str(bundle), snapshot_key=cid, stop_signal=stop_signal,
            tty=config.tty, stdin=config.stdin, stdin_once=config.stdin_once,
            mounts=[mount_record(m) for m in config.mounts],
            cgroup_path=container_cgroup(pod.meta.cgroup_parent, cid,
                                         node.cfg.cgroup_driver).fs_path,
            monitor_cgroup=monitor_cgroup(node.cfg.monitor_cgroup, pod.meta.cgroup_parent,
                                          cid, node.cfg.cgroup_driver),
        )
        rec = ContainerRecord(meta=meta)
        rec.status.resources = _resources(config)
        node.add_container(rec)
        log.info("container creating", container=cid, pod=pod.meta.id, name=metadata.name,
                 image=config.image.image)
        try:
            async with node.nri.block_sync(), \
                    undone_on_failure(node, rec, self.teardown, node.drop_container):
                await self._setup(rec, pod, config, image.config, rt)
                rec.status.state = "created"
                node.put_container(rec)
        except Exception as exc:
            await node.nri.undo_create_container(pod, rec)
            # runc's "failed to setns into ipc namespace" is the pod's fault, not the
            # container's: say so, and stop reporting the pod Ready.
            if isinstance(exc, CribError) and check_pins(node, pod):
                raise pins_lost_error(pod) from None
            raise
        log.info("container created", container=cid, pid=rec.status.pid)
        self.exits.watch(rec)
        node.emit(cid, "created")
        await node.nri.post_create_container(pod, rec)
        return cid

    async def _setup(self, rec: ContainerRecord, pod: SandboxRecord, config: ContainerConfig,
                     image_config: dict[str, Any], rt: RuntimeImpl) -> None:
        node, meta = self.node, rec.meta
        bundle = Path(meta.bundle)
        (bundle / "rootfs").mkdir(parents=True, exist_ok=True)
        monitor = ConmonSpec(conmon=node.cfg.conmon, cid=meta.id, name=meta.name,
                             runtime_path=rt.path, runtime_args=rt.global_args(),
                             bundle=bundle, log_path=meta.log_path or str(bundle / "ctr.log"),
                             exit_dir=node.exit_dir, socket_dir=node.sock_dir, tty=meta.tty,
                             stdin=meta.stdin, stdin_once=meta.stdin_once,
                             log_size_max=node.cfg.log_size_max, cgroup=meta.monitor_cgroup)
        # The monitor creates the container once config.json is written.
        conmon_pid, pid = await monitor_around(
            node, monitor, self._make_bundle(rec, pod, config, image_config, rt),
            timeout=node.cfg.create_timeout)
        rec.status.conmon_pid, rec.status.pid = conmon_pid, pid
        rec.status.conmon_started = node.monitor.started(conmon_pid)
        failpoint("create_after_conmon")

    async def _make_bundle(self, rec: ContainerRecord, pod: SandboxRecord,
                           config: ContainerConfig, image_config: dict[str, Any],
                           rt: RuntimeImpl) -> None:
        """The rootfs snapshot mounted, volumes, and config.json."""
        node, meta = self.node, rec.meta
        bundle = Path(meta.bundle)
        rootfs = bundle / "rootfs"
        snap = await node.imaged.create_snapshot(SnapshotCreate(
            key=meta.snapshot_key, image=meta.image_id,
            labels={"io.crib.container": meta.id, "io.crib.pod": meta.pod_id}))
        await mount_rootfs(node, snap.mounts, rootfs, pod.meta)
        failpoint("create_after_mount")
        img = image_config.get("config") or {}
        context = config.linux.security_context if is_set(config.linux) else None
        if context is not None and not is_set(context):
            context = None
        user = await asyncio.to_thread(
            resolve_user, rootfs, image_user=str(img.get("User") or ""),
            run_as_user=context.run_as_user.value
            if context and is_set(context.run_as_user) else None,
            run_as_username=context.run_as_username if context else "",
            run_as_group=context.run_as_group.value
            if context and is_set(context.run_as_group) else None,
            supplemental=list(context.supplemental_groups) if context else [],
            strict_groups=context is not None
            and context.supplemental_groups_policy == SupplementalGroupsPolicy.Strict,
        )
        meta.uid, meta.gid, meta.groups = user.uid, user.gid, user.groups
        target_pids = {c.meta.id: c.status.pid for c in node.pod_containers(pod.meta.id)
                       if c.status.state == "running"}
        annotations = dict(config.annotations)
        annotations.update({
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": meta.name,
            "io.kubernetes.cri.sandbox-id": pod.meta.id,
            "io.kubernetes.cri.sandbox-name": pod.meta.name,
            "io.kubernetes.cri.sandbox-namespace": pod.meta.namespace,
            "io.kubernetes.cri.sandbox-uid": pod.meta.uid,
            "io.kubernetes.cri.image-name": meta.image,
        })
        image_sources = await mount_image_volumes(node, rec, config, pod.meta)
        await asyncio.to_thread(_make_host_paths, config, image_sources)
        mapped_sources = await map_mounts(node, config, pod.meta, bundle, image_sources)
        defaults = security.current()
        spec = await asyncio.to_thread(build_container_spec, config, ContainerSpecInput(
            cid=meta.id, rootfs=rootfs, sandbox=pod.meta, image_config=image_config,
            user=user, infra_pid=pod.status.infra_pid,
            cgroup_path=container_cgroup(pod.meta.cgroup_parent, meta.id,
                                         node.cfg.cgroup_driver).oci_path,
            pids_limit=node.cfg.pids_limit, swap_controller=node.host.swap_controller,
            annotations=annotations, target_pids=target_pids,
            recursive_read_only=rt.recursive_read_only, handler=rt.name,
            image_sources=image_sources, mapped_sources=mapped_sources, security=defaults,
            pod_selinux=_pod_selinux(pod) if defaults.selinux.enabled() else None))
        # NRI CreateContainer: the plugins' adjustments land in config.json.
        await node.nri.create_container(pod, rec, spec)
        write_config(bundle, spec)
        node.put_container(rec)

    async def teardown(self, rec: ContainerRecord,
                       deleted: Awaitable[bool] | None = None) -> None:
        """Undo every step of `_setup` (each tolerates never having happened). A step
        that fails (imaged down) does not stop the local ones; the first failure is
        raised at the end. `deleted`: the exit-time runtime delete's outcome, when the
        caller took it over (`Exits.released`)."""
        node, meta = self.node, rec.meta
        failed: list[Exception] = []
        rt = node.runtimes.get(meta.handler)
        released = await (deleted if deleted is not None else self.exits.released(meta.id))
        if rt is not None and not released:
            await attempt(failed, "runtime delete", rt.delete(meta.id), container=meta.id)
        await release_monitor(node, rec.status.conmon_pid, rec.status.conmon_started,
                              meta.monitor_cgroup, meta.id)
        await unmount_and_remove(node, failed, meta.bundle,
                                 [meta.snapshot_key, *meta.image_mounts], container=meta.id)
        for leftover in (node.sock_dir / meta.id, node.exit_dir / meta.id):
            with contextlib.suppress(OSError):
                leftover.unlink()
        if failed:
            raise failed[0]

    # ------------------------------------------------------------ start, stop, remove

    async def start(self, rec: ContainerRecord, rt: RuntimeImpl) -> None:
        """created -> running; a process the runtime fails to start ends "exited"."""
        node = self.node
        async with node.lock(rec.meta.id):
            if rec.status.state == "running":
                raise FailedPrecondition(f"container {rec.meta.id} is already running")
            if rec.status.state != "created":
                raise FailedPrecondition(
                    f"container {rec.meta.id} is {rec.status.state}, not created")
            pod = node.sandboxes.get(rec.meta.pod_id)
            if pod is not None:
                await node.nri.start_container(pod, rec)
            started = now()
            try:
                await rt.start(rec.meta.id, timeout=node.cfg.create_timeout)
                failpoint("start_after_runtime")
            except CribError as exc:
                # The runtime failed the process start (bad binary, ...): the monitor
                # records the exit; report it like containerd, an exited container.
                await self.exits.settle(rec, fallback_code=128, message=exc.message)
                pod = node.sandboxes.get(rec.meta.pod_id)
                if pod is not None:
                    check_pins(node, pod)
                raise
            if rec.status.state == "created":  # the exit watcher may have been faster
                rec.status.state = "running"
            rec.status.started_at = started
            if rec.status.finished_at and rec.status.finished_at < started:
                rec.status.finished_at = started
            node.put_container(rec)
        log.info("container started", container=rec.meta.id)
        node.emit(rec.meta.id, "started")
        if pod is not None:
            await node.nri.post_start_container(pod, rec)

    async def stop(self, rec: ContainerRecord, timeout: int) -> None:
        """The stop signal, up to `timeout` seconds, then SIGKILL; returns once the exit
        is recorded. An exited (or still creating) container is left as it is."""
        await self._stop(rec, timeout)
        if rec.status.state == "exited":  # NRI StopContainer, once per container
            await self.node.nri.stop_container(self.node.sandboxes.get(rec.meta.pod_id), rec)

    async def _stop(self, rec: ContainerRecord, timeout: int) -> None:
        if rec.status.state in ("exited", "creating"):
            return
        rt = self.node.runtimes.get(rec.meta.handler)
        if rt is None:
            raise FailedPrecondition(f"runtime handler {rec.meta.handler!r} is gone")
        log.info("container stopping", container=rec.meta.id, timeout=timeout)
        if timeout > 0 and rec.status.state == "running":
            await rt.kill(rec.meta.id, signal_number(rec.meta.stop_signal))
            failpoint("stop_after_signal")
            if await self.exits.wait(rec, float(timeout)):
                return
        await rt.kill(rec.meta.id, signal.SIGKILL, all_procs=rec.status.state == "running")
        if not await self.exits.wait(rec, KILL_WAIT):
            if not self.node.monitor.alive(rec.status.pid):
                await self.exits.settle(rec, fallback_code=137)
                return
            raise DeadlineExceeded(f"container {rec.meta.id} did not die after SIGKILL")

    async def remove(self, rec: ContainerRecord, *, queue: bool = True) -> None:
        """Stop if needed, drop the record with its release queued (one transaction),
        and release in the background (see the module docstring). `queue=False` tears
        down first and drops after, for a caller that waits for the release anyway
        (RemovePodSandbox)."""
        node = self.node
        if rec.status.state in ("running", "created", "unknown"):
            await self.stop(rec, 0)
        async with node.lock(rec.meta.id):
            if rec.meta.id not in node.containers:
                return
            if queue:
                # The runtime delete `Exits` started at the exit, taken over before the
                # drop makes it forget it (one loop turn): the release waits for it
                # instead of racing a second delete against it.
                deleted = asyncio.ensure_future(self.exits.released(rec.meta.id))
                await asyncio.sleep(0)
                with node.store.transaction():
                    node.store.put(RELEASE_KIND, rec.meta.id, rec)
                    node.store.delete(CONTAINER_KIND, rec.meta.id)
                node.drop_container(rec.meta.id)
                self._queue_release(rec, deleted)
            else:
                await self.teardown(rec)
                failpoint("remove_after_teardown")
                node.drop_container(rec.meta.id)
        log.info("container removed", container=rec.meta.id)
        node.emit(rec.meta.id, "deleted", rec.meta.pod_id)
        await node.nri.remove_container(node.sandboxes.get(rec.meta.pod_id), rec)

    def _queue_release(self, rec: ContainerRecord,
                       deleted: asyncio.Future[bool] | None = None) -> None:
        cid = rec.meta.id
        if cid not in self._releasing:
            task = asyncio.create_task(self._release(rec, deleted))
            self._releasing[cid] = (rec.meta.pod_id, task)
            task.add_done_callback(lambda _t: self._releasing.pop(cid, None))

    async def _release(self, rec: ContainerRecord,
                       deleted: asyncio.Future[bool] | None) -> None:
        """Tear a removed container down, then forget its release record; retried with
        a growing pause, then left to the next start."""
        # Started once the answer has gone out: the teardown's first steps (the monitor
        # killed, unmounts) are synchronous and would hold the answer back.
        await asyncio.sleep(RELEASE_DELAY)
        failpoint("remove_before_release")
        for attempt_no in range(RELEASE_TRIES):
            try:
                async with asyncio.timeout(RELEASE_TIMEOUT):
                    await self.teardown(rec, deleted)
                    deleted = None  # a retry deletes again
                failpoint("remove_after_teardown")
                self.node.store.delete(RELEASE_KIND, rec.meta.id)
                return
            except Exception as exc:
                log.warning("container release failed", container=rec.meta.id,
                            attempt=attempt_no + 1, error=str(exc))
                await asyncio.sleep(min(2.0 ** attempt_no, 30.0))
        log.error("container release left for the next start", container=rec.meta.id)

    async def finish_releases(self, wait: float) -> None:
        """Queue every stored release not under way (recovery, after a crash); wait up
        to `wait` seconds for them, the rest finish in the background."""
        for rec in self.node.store.list(RELEASE_KIND, ContainerRecord):
            log.warning("finishing a queued container release", container=rec.meta.id)
            self._queue_release(rec)
        tasks = [t for _pid, t in self._releasing.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=wait)

    async def released(self, pod_id: str = "") -> None:
        """Wait for the queued releases of `pod_id`'s containers (of every pod's by
        default)."""
        tasks = [t for pid, t in self._releasing.values() if pid == pod_id or not pod_id]
        if tasks:
            await asyncio.wait(tasks)

    async def close(self, timeout: float = 5.0) -> None:
        """Let releases under way finish for up to `timeout`; what is left is finished
        at the next start."""
        tasks = [t for _pid, t in self._releasing.values()]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1)

    # ------------------------------------------------------------ live changes

    async def update(self, rec: ContainerRecord, rt: RuntimeImpl,
                     resources: dict[str, Any]) -> None:
        """New resources on the live cgroup (`<runtime> update`), then recorded."""
        node = self.node
        oci = resources_to_oci(resources, pids_limit=node.cfg.pids_limit,
                               swap_controller=node.host.swap_controller)
        oci.pop("devices", None)
        pod = node.sandboxes.get(rec.meta.pod_id)
        if pod is not None:  # NRI UpdateContainer: plugins may change what is applied
            oci = await node.nri.update_container(pod, rec, oci)
        await rt.update(rec.meta.id, oci)
        merged = dict(rec.status.resources)
        merged.update({k: v for k, v in resources.items() if v not in (None, "", 0, [], {})})
        rec.status.resources = merged
        node.put_container(rec)
        if pod is not None:
            await node.nri.post_update_container(pod, rec)

    async def reopen_log(self, rec: ContainerRecord) -> None:
        """Ask the monitor to reopen the log; returns once the new file exists."""
        self.node.monitor.control(Path(rec.meta.bundle), REOPEN_LOGS_EVENT)
        # conmon reopens asynchronously; the kubelet expects the new file when we answer.
        if rec.meta.log_path:
            end = time.monotonic() + 5
            while time.monotonic() < end and not os.path.exists(rec.meta.log_path):
                await asyncio.sleep(0.02)


def _pod_selinux(pod: SandboxRecord) -> SeLinuxOption | None:
    """The pod's SELinux options, which the container's fall back to (from the pod's
    stored config: read only where SELinux is on)."""
    config = PodSandboxConfig().parse(bytes.fromhex(pod.meta.config))
    linux = config.linux if is_set(config.linux) else None
    if linux is None or not is_set(linux.security_context) \
            or not is_set(linux.security_context.selinux_options):
        return None
    return linux.security_context.selinux_options


def _resources(config: ContainerConfig) -> dict[str, Any]:
    return resources_to_dict(config.linux.resources if is_set(config.linux) else None)


def _make_host_paths(config: ContainerConfig, image_sources: dict[str, str]) -> None:
    """A bind mount's missing host directory is created, as the kubelet expects (and
    containerd does); the spec builder itself never touches the host."""
    for m in config.mounts:
        if m.container_path in image_sources or not m.host_path:
            continue
        if not os.path.exists(m.host_path):
            os.makedirs(m.host_path, exist_ok=True)
