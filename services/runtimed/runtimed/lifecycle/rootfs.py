"""Root filesystems and mounts of a pod with its own user namespace, ID-mapped by runtimed
(`sandbox.idmapped`) before the OCI runtime sees them; for any other pod, mounted as
imaged describes them. Everything lands under the bundle, so the teardown's unmount of
the bundle takes it away."""

from __future__ import annotations

import asyncio
from pathlib import Path

from crib_common.cri.runtime.v1 import ContainerConfig
from crib_common.models.imaged import Mount

from ..node import Node
from ..store.records import SandboxMeta
from ..userns.mappings import PodUserns

__all__ = ["map_mounts", "mount_rootfs"]


async def mount_rootfs(node: Node, mounts: list[Mount], target: Path,
                       pod: SandboxMeta) -> None:
    """imaged's snapshot mounts at `target`: with the pod's user namespace, an overlay
    over ID-mapped lower layers whose upper directory the mapped root owns."""
    userns = PodUserns.from_record(pod.userns_mappings)
    if userns is None:
        await asyncio.to_thread(node.host.mount_all, mounts, target)
        return
    await asyncio.to_thread(node.host.mount_overlay_idmapped, mounts, target, pod.userns,
                            userns.root, target.parent / f".idmap-{target.name}")


async def map_mounts(node: Node, config: ContainerConfig, pod: SandboxMeta,
                     bundle: Path, skip: dict[str, str]) -> dict[str, str]:
    """ID-mapped clones, under the bundle, of the host paths of the mounts that carry
    mappings (checked against the pod's by CreateContainer); container path -> clone.
    `skip`: the image volumes, mapped when they were mounted."""
    out: dict[str, str] = {}
    if not pod.userns:
        return out
    for index, m in enumerate(config.mounts):
        if m.container_path in skip or not m.host_path:
            continue
        if not (m.uid_mappings or m.gid_mappings):
            continue
        target = bundle / "mounts" / str(index)
        await asyncio.to_thread(node.host.idmapped_clone, m.host_path, target, pod.userns)
        out[m.container_path] = str(target)
    return out
