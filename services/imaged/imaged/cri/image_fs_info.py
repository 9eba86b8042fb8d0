"""CRI `ImageFsInfo`: bytes and inodes the image store really uses."""

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
from crib_common.server import CriTable

from ..service import ImageService


def register(table: CriTable, svc: ImageService) -> None:
    @table.unary("/runtime.v1.ImageService/ImageFsInfo", ImageFsInfoRequest)
    async def image_fs_info(_request: ImageFsInfoRequest) -> ImageFsInfoResponse:
        store = svc.store
        used, inodes = await asyncio.to_thread(store.usage)
        usage = FilesystemUsage(
            timestamp=time.time_ns(),
            fs_id=FilesystemIdentifier(mountpoint=str(store.root)),
            used_bytes=UInt64Value(used), inodes_used=UInt64Value(inodes),
        )
        # No container_filesystems: writable layers live on the same filesystem, and the
        # kubelet then treats the image filesystem as the container filesystem.
        return ImageFsInfoResponse(image_filesystems=[usage])
