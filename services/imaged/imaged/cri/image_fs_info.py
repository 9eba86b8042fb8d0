"""CRI `ImageFsInfo`: bytes and inodes the image store and the containers' writable
layers really use.

`image_filesystems` is the image store (blobs and unpacked layers) under imaged's root;
`container_filesystems` (api.proto ImageFsInfoResponse: "may be used for example if
container and image storage are separated") is the snapshots directory holding every
container's writable (upper) layer. Each names its real directory (symlinks resolved) as
the mountpoint, so the kubelet can tell the two apart and account for each.
"""

from __future__ import annotations

import asyncio
import os
import time

from crib_common.cri.runtime.v1 import (
    FilesystemIdentifier,
    FilesystemUsage,
    ImageFsInfoRequest,
    ImageFsInfoResponse,
    UInt64Value,
)
from crib_common.server import CriTable

from ..service import ImageService


def register(table: CriTable, svc: ImageService) -> None:
    @table.unary("/runtime.v1.ImageService/ImageFsInfo", ImageFsInfoRequest)
    async def image_fs_info(_request: ImageFsInfoRequest) -> ImageFsInfoResponse:
        store = svc.store
        images_used, images_inodes = await asyncio.to_thread(store.usage)
        containers_used, containers_inodes = await asyncio.to_thread(store.container_usage)
        now = time.time_ns()
        return ImageFsInfoResponse(
            image_filesystems=[_usage(now, str(store.root), images_used, images_inodes)],
            container_filesystems=[_usage(now, str(store.snapshot_dir), containers_used,
                                          containers_inodes)],
        )


def _usage(timestamp: int, directory: str, used: int, inodes: int) -> FilesystemUsage:
    return FilesystemUsage(
        timestamp=timestamp,
        fs_id=FilesystemIdentifier(mountpoint=os.path.realpath(directory)),
        used_bytes=UInt64Value(used), inodes_used=UInt64Value(inodes),
    )
