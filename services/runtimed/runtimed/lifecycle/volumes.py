"""Image volumes (CRI Mount.image, the kubelet's ImageVolume): each image gets a snapshot
from imaged, mounted read-only under the container's bundle; the container binds it (or
its `image_sub_path`) read-only. The snapshot keys are recorded before the snapshots
exist, so the container's teardown and the orphan sweep find them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from crib_common.cri.runtime.v1 import ContainerConfig
from crib_common.errors import InvalidArgument
from crib_common.models.imaged import Mount, SnapshotCreate

from ..node import Node
from ..oci.spec import is_set
from ..store.records import ContainerRecord, SandboxMeta
from .rootfs import mount_rootfs

__all__ = ["mount_image_volumes", "mount_record"]


async def mount_image_volumes(node: Node, rec: ContainerRecord, config: ContainerConfig,
                              pod: SandboxMeta) -> dict[str, str]:
    """Mount every image volume of `config` (ID-mapped in a pod with its own user
    namespace, as the rootfs); container path -> host source."""
    meta = rec.meta
    sources: dict[str, str] = {}
    for index, m in enumerate(config.mounts):
        if not (is_set(m.image) and m.image.image):
            continue
        key = f"{meta.id}-img{index}"
        meta.image_mounts.append(key)
        node.put_container(rec)  # before the snapshot exists: undo and sweep see it
        snap = await node.imaged.create_snapshot(SnapshotCreate(
            key=key, image=m.image.image,
            labels={"io.crib.container": meta.id, "io.crib.image-volume": "true"}))
        target = Path(meta.bundle) / "images" / str(index)
        ro = [Mount(type=x.type, source=x.source, options=[*x.options, "ro"])
              for x in snap.mounts]
        await mount_rootfs(node, ro, target, pod)
        sources[m.container_path] = _sub_path(target, m.image_sub_path)
        # ContainerStatus reports the image volume by the image's digest (the kubelet's
        # ImageVolume code compares it), not only by the name it was asked by.
        for recorded in meta.mounts:
            if recorded.get("container_path") == m.container_path and recorded.get("image"):
                recorded["image_ref"] = snap.image_id
    return sources


def _sub_path(root: Path, sub: str) -> str:
    """`root`, or the directory `sub` names inside it; never a path out of it (a symlink
    in the image is resolved inside the image or refused)."""
    if not sub:
        return str(root)
    if sub.startswith("/") or ".." in Path(sub).parts:
        raise InvalidArgument(f"image_sub_path {sub!r} must be relative, without '..'")
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, sub))
    if real != base and not real.startswith(base + os.sep):
        raise InvalidArgument(f"image_sub_path {sub!r} leads out of the image")
    if not os.path.exists(real):
        raise InvalidArgument(f"image_sub_path {sub!r} does not exist in the image")
    return real


def mount_record(m: Any) -> dict[str, Any]:
    """What ContainerStatus reports of a CRI Mount."""
    out: dict[str, Any] = {"container_path": m.container_path, "host_path": m.host_path,
                           "readonly": m.readonly, "propagation": int(m.propagation)}
    if m.recursive_read_only:
        out["recursive_read_only"] = True
    if is_set(m.image) and m.image.image:
        out.update(image=m.image.image, image_sub_path=m.image_sub_path, readonly=True)
    return out
