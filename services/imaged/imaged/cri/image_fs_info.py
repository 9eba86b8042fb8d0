"""CRI `ImageFsInfo`: bytes and inodes the image store and the containers' writable
layers really use, and the filesystem each lives on.

`image_filesystems` is the image store (blobs and unpacked layers) under imaged's root;
`container_filesystems` (api.proto ImageFsInfoResponse: "may be used for example if
container and image storage are separated") is the snapshots directory holding every
container's writable (upper) layer. Each names as `mountpoint` the mount point of the
filesystem that holds it (/proc/self/mountinfo, the deepest mount above the resolved
directory), as containerd and CRI-O do: the kubelet compares the two and, when they
differ, treats the image filesystem as split from the container filesystem (separate
eviction signals and image GC). One disk gives one mountpoint for both.
"""

from __future__ import annotations

import asyncio
import time

from crib_common.cri.runtime.v1 import (
    FilesystemIdentifier,
    FilesystemUsage,
    ImageFsInfoRequest,
    ImageFsInfoResponse,
    UInt64Value,
)
from crib_common.mountinfo import mountpoint_of
from crib_common.server import CriTable

from ..service import ImageService

__all__ = ["fs_usage", "mountpoint_of", "register"]

def register(table: CriTable, svc: ImageService) -> None:
    @table.unary("/runtime.v1.ImageService/ImageFsInfo", ImageFsInfoRequest)
    async def image_fs_info(_request: ImageFsInfoRequest) -> ImageFsInfoResponse:
        store = svc.store
        images_used, images_inodes = await asyncio.to_thread(store.usage)
        containers_used, containers_inodes = await asyncio.to_thread(store.container_usage)
        images_mp, containers_mp = await asyncio.to_thread(
            lambda: (mountpoint_of(store.root), mountpoint_of(store.snapshot_dir)))
        now = time.time_ns()
        return ImageFsInfoResponse(
            image_filesystems=[fs_usage(now, images_mp, images_used, images_inodes)],
            container_filesystems=[fs_usage(now, containers_mp, containers_used,
                                            containers_inodes)],
        )


def fs_usage(timestamp: int, mountpoint: str, used: int, inodes: int) -> FilesystemUsage:
    return FilesystemUsage(
        timestamp=timestamp, fs_id=FilesystemIdentifier(mountpoint=mountpoint),
        used_bytes=UInt64Value(used), inodes_used=UInt64Value(inodes),
    )
