"""ImageFsInfo names the filesystem that holds each store: one mountpoint for both on one
disk, two when the image store sits on its own filesystem."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from imaged.cri.image_fs_info import fs_usage, mountpoint_of

MOUNTINFO = """\
21 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 21 8:17 / /var/lib/crib rw,relatime shared:2 - xfs /dev/sdb1 rw
31 30 8:33 / /var/lib/crib/imaged/content rw,relatime - xfs /dev/sdc1 rw
32 21 0:50 / /mnt/with\\040space rw - tmpfs tmpfs rw
"""


def test_longest_mount_above_the_directory(tmp_path: Path) -> None:
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO)
    assert mountpoint_of("/var/lib/crib/imaged/snapshots", mi) == "/var/lib/crib"
    assert mountpoint_of("/var/lib/crib/imaged/content/blobs", mi) == \
        "/var/lib/crib/imaged/content"
    assert mountpoint_of("/var/lib/cribx", mi) == "/"  # a prefix of a name is not a parent
    assert mountpoint_of("/mnt/with space/x", mi) == "/mnt/with space"
    assert mountpoint_of("/srv", tmp_path / "missing") == "/srv"


def test_fs_usage_message() -> None:
    u = fs_usage(5, "/var/lib/crib", 1024, 7)
    assert u.fs_id.mountpoint == "/var/lib/crib"
    assert (u.used_bytes.value, u.inodes_used.value, u.timestamp) == (1024, 7, 5)


@pytest.fixture
def split_dirs(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """images/ on a tmpfs of its own, snapshots/ and shared/ on tmp_path's filesystem."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    images, snapshots = tmp_path / "images", tmp_path / "snapshots"
    images.mkdir()
    snapshots.mkdir()
    (tmp_path / "shared").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "crib-test-imagefs",
                    str(images)], check=True)
    try:
        yield images, snapshots, tmp_path / "shared"
    finally:
        subprocess.run(["umount", str(images)], check=True)


def test_split_filesystems_show_two_mountpoints(split_dirs: tuple[Path, Path, Path]) -> None:
    images, snapshots, shared = split_dirs
    (images / "blobs").mkdir()
    assert mountpoint_of(images / "blobs") == str(images)
    other = mountpoint_of(snapshots)
    assert other != str(images) and str(snapshots).startswith(other)
    # Two directories on one disk: one mountpoint, as the kubelet must see them.
    assert mountpoint_of(shared) == other
