"""A pod's infra process: catatonit as PID 1 of a shared PID namespace, or the configured
pause image. Either runs like a container, under the monitor, so it outlives runtimed;
its exit file carries the pod's id (`lifecycle.exits` marks the pod notready).

    (none) ──start──> running ──stop (SIGKILL, wait)──> gone ──delete──> (runtime forgot)
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable
from pathlib import Path

import structlog

from crib_common.errors import NotFound, Unavailable
from crib_common.models.imaged import ImageInfo, PullEvent, PullPod, PullRequest, SnapshotCreate

from ..cgroups import container_cgroup
from ..conmon.monitor import ConmonSpec
from ..oci.runtime import RuntimeImpl
from ..oci.spec import build_pause_spec, build_sandbox_spec
from ..oci.user import resolve_user
from ..bundle import write_config
from ..node import Node
from ..store.records import SandboxRecord
from .rootfs import mount_rootfs

__all__ = ["KILL_WAIT", "monitor_around", "start_infra", "stop_infra"]

log = structlog.get_logger("crib.runtimed")

# How long a stop waits for a killed process to be gone (also StopContainer after SIGKILL).
KILL_WAIT = 10.0


async def start_infra(node: Node, rec: SandboxRecord, rt: RuntimeImpl) -> None:
    """The pause image when one is configured, else catatonit for a shared PID
    namespace; nothing for a pod that needs neither. Its monitor starts first and is
    moved into its own cgroup while the bundle is made, as a container's
    (`Containers._setup`)."""
    if node.cfg.pause_image:
        make_bundle = _pause_bundle
    elif rec.meta.shared_pid:
        make_bundle = _catatonit_bundle
    else:
        return
    meta = rec.meta
    bundle = Path(meta.pod_dir) / "infra"
    bundle.mkdir(parents=True, exist_ok=True)
    spec = ConmonSpec(conmon=node.cfg.conmon, cid=meta.id, name=f"infra-{meta.name}",
                      runtime_path=rt.path, runtime_args=rt.global_args(), bundle=bundle,
                      log_path=str(bundle / "infra.log"), exit_dir=node.exit_dir,
                      socket_dir=node.sock_dir, cgroup=meta.infra_monitor_cgroup)
    conmon_pid, pid = await monitor_around(node, spec, make_bundle(node, rec, bundle),
                                           timeout=node.cfg.create_timeout)
    rec.status.infra_pid, rec.status.infra_conmon_pid = pid, conmon_pid
    rec.status.infra_started = node.monitor.started(pid)
    node.put_sandbox(rec)
    await rt.start(meta.id)


async def monitor_around(node: Node, spec: ConmonSpec, bundle: Awaitable[None], *,
                         timeout: float) -> tuple[int, int]:
    """Start the monitor held on its start pipe, await `bundle` (the bundle being made)
    meanwhile, then let the monitor create: its move into its own cgroup (an RCU grace
    period, `conmon.monitor._release`) overlaps the bundle work. A failed bundle kills
    and reaps the held monitor. Returns (conmon pid, container pid)."""
    bundle_ready = asyncio.Event()
    starting = asyncio.ensure_future(node.monitor.start(spec, timeout=timeout,
                                                        ready=bundle_ready))
    try:
        await bundle
    except BaseException:
        starting.cancel()  # the held monitor is killed and reaped
        await asyncio.wait({starting})
        raise
    bundle_ready.set()
    return await starting


async def _catatonit_bundle(node: Node, rec: SandboxRecord, bundle: Path) -> None:
    """catatonit -P as PID 1 of the pod's shared PID namespace, bound into an empty
    rootfs."""
    meta = rec.meta
    rootfs = bundle / "rootfs"
    for sub in ("proc", "dev"):
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    (rootfs / "catatonit").touch()
    write_config(bundle, build_sandbox_spec(meta, rootfs, "/catatonit", node.cfg.catatonit,
                                            _oci_cgroup(node, rec)))


def _oci_cgroup(node: Node, rec: SandboxRecord) -> str:
    """config.json's cgroupsPath for the infra: a cgroup named after the sandbox id under
    the pod's parent, in the driver's form (`cgroups.container_cgroup`)."""
    return container_cgroup(rec.meta.cgroup_parent, rec.meta.id,
                            node.cfg.cgroup_driver).oci_path


async def _pause_image(node: Node, rec: SandboxRecord) -> ImageInfo:
    """The configured pause image, pulled through imaged when it is not stored yet (for
    the pod of `rec`, as imaged's pull table shows)."""
    ref = node.cfg.pause_image
    try:
        return await node.imaged.resolve_image(ref)
    except NotFound:
        pass
    log.info("pulling pause image", image=ref)
    last: PullEvent | None = None
    pod = PullPod(name=rec.meta.name, namespace=rec.meta.namespace, uid=rec.meta.uid)
    async for event in node.imaged.pull(PullRequest(reference=ref, requester="pause", pod=pod)):
        last = event
    if last is None or last.status != "done":
        raise Unavailable(f"pulling pause image {ref!r} failed: "
                          f"{last.error if last else 'no answer from imaged'}")
    return await node.imaged.resolve_image(last.image_id or ref)


async def _pause_bundle(node: Node, rec: SandboxRecord, bundle: Path) -> None:
    """The pause image as the pod's infra container: a writable snapshot of it,
    config.json from its Entrypoint/Cmd."""
    meta = rec.meta
    image = await _pause_image(node, rec)
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True, exist_ok=True)
    meta.pause_image = image.id
    meta.infra_snapshot = f"infra-{meta.id}"
    node.put_sandbox(rec)  # before the snapshot exists, so undo and recovery see it
    snap = await node.imaged.create_snapshot(SnapshotCreate(
        key=meta.infra_snapshot, image=image.id,
        labels={"io.crib.pod": meta.id, "io.crib.infra": "true"}))
    await mount_rootfs(node, snap.mounts, rootfs, meta)
    img = image.config.get("config") or {}
    user = await asyncio.to_thread(resolve_user, rootfs,
                                   image_user=str(img.get("User") or ""),
                                   run_as_user=None, run_as_username="",
                                   run_as_group=None, supplemental=[])
    write_config(bundle, build_pause_spec(meta, rootfs, image.config, user.uid, user.gid,
                                          _oci_cgroup(node, rec)))


async def stop_infra(node: Node, rec: SandboxRecord) -> None:
    """SIGKILL the infra and wait (up to KILL_WAIT) for it to be gone."""
    rt = node.runtimes.get(rec.meta.handler)
    if rt is None or not rec.meta.has_infra:
        return
    await rt.kill(rec.meta.id, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT
    while time.monotonic() < deadline and rec.status.infra_pid \
            and node.monitor.alive(rec.status.infra_pid):
        await asyncio.sleep(0.05)
