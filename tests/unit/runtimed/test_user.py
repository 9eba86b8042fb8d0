"""User resolution from the image's /etc/passwd and /etc/group."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crib_common.errors import InvalidArgument
from runtimed.oci.user import read_rootfs_file, resolve_user


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                "crib:x:1000:1000:crib:/home/crib:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\ncrib:x:1000:\ncribgrp:x:2000:crib\nother:x:3000:\n")
    return tmp_path


def test_default_is_root(rootfs: Path) -> None:
    u = resolve_user(rootfs)
    assert (u.uid, u.gid, u.groups) == (0, 0, [])


def test_names_and_numbers(rootfs: Path) -> None:
    u = resolve_user(rootfs, image_user="crib")
    assert (u.uid, u.gid, u.groups) == (1000, 1000, [2000])
    u = resolve_user(rootfs, image_user="crib:other")
    assert (u.uid, u.gid) == (1000, 3000)
    u = resolve_user(rootfs, image_user="1000:5")
    assert (u.uid, u.gid) == (1000, 5)
    u = resolve_user(rootfs, image_user="4242")  # unknown numeric uid is fine
    assert (u.uid, u.gid) == (4242, 0)
    u = resolve_user(rootfs, image_user="crib", run_as_user=0, run_as_group=7,
                     supplemental=[9, 9])
    assert (u.uid, u.gid, u.groups) == (0, 7, [9])
    u = resolve_user(rootfs, run_as_username="crib")
    assert u.uid == 1000


def test_unknown_names(rootfs: Path) -> None:
    with pytest.raises(InvalidArgument):
        resolve_user(rootfs, image_user="ghost")
    with pytest.raises(InvalidArgument):
        resolve_user(rootfs, image_user="crib:ghosts")


def test_symlink_out_of_rootfs_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    os.symlink("/etc/shadow", tmp_path / "etc" / "passwd")
    assert read_rootfs_file(tmp_path, "/etc/passwd") == ""
    os.symlink("../../../../etc/hostname", tmp_path / "etc" / "group")
    assert read_rootfs_file(tmp_path, "/etc/group") == ""


def test_fifo_or_directory_as_passwd_is_no_file(tmp_path: Path) -> None:
    # A hostile image's FIFO would block an ordinary open (and the create) forever.
    (tmp_path / "etc").mkdir()
    os.mkfifo(tmp_path / "etc" / "passwd")
    (tmp_path / "etc" / "group").mkdir()
    assert read_rootfs_file(tmp_path, "/etc/passwd") == ""
    assert read_rootfs_file(tmp_path, "/etc/group") == ""
    user = resolve_user(tmp_path, image_user="1000:1000")
    assert (user.uid, user.gid) == (1000, 1000)
    with pytest.raises(InvalidArgument):
        resolve_user(tmp_path, image_user="crib")


def test_strict_supplemental_groups_leave_out_the_image_groups(rootfs: Path) -> None:
    merged = resolve_user(rootfs, image_user="crib", supplemental=[4000])
    assert merged.groups == [2000, 4000]  # cribgrp from /etc/group, then the context's
    strict = resolve_user(rootfs, image_user="crib", supplemental=[4000], strict_groups=True)
    assert (strict.uid, strict.gid, strict.groups) == (1000, 1000, [4000])
