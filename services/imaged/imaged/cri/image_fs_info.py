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
import os
import time
from pathlib import Path

from crib_common.cri.runtime.v1 import (
    FilesystemIdentifier,
    FilesystemUsage,
    ImageFsInfoRequest,
    ImageFsInfoResponse,
    UInt64Value,
)
from crib_common.server import CriTable

from ..service import ImageService

MOUNTINFO = Path("/proc/self/mountinfo")


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


def _unescape(field: str) -> str:
    # proc(5): space, tab, newline and backslash in mount points are written as \ooo.
    out, i = [], 0
    while i < len(field):
        digits = field[i + 1:i + 4]
        if field[i] == "\\" and len(digits) == 3 and digits.isdigit():
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mountpoint_of(directory: str | os.PathLike[str], mountinfo: Path = MOUNTINFO) -> str:
    """The mount point of the filesystem holding `directory` (symlinks resolved): the
    longest mount point in mountinfo that is the directory or one of its ancestors.
    Falls back to the resolved directory itself when mountinfo cannot be read."""
    real = os.path.realpath(directory)
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return real
    best = ""
    for line in lines:
        fields = line.split(" - ", 1)[0].split()
        if len(fields) < 5:
            continue
        mp = _unescape(fields[4])
        inside = mp == "/" or real == mp or real.startswith(mp.rstrip("/") + "/")
        if inside and len(mp) >= len(best):
            best = mp
    return best or real
