"""`userns.idmap`, the ctypes layer over open_tree, mount_setattr and move_mount: each
failure is an IdmapError naming the call, the path and the errno, and nothing stays
attached; the kernel's answers where root can get them, a fake syscall for the ones
this kernel would never give (ENOSYS)."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crib_common.nsholder import HolderError, IdMapping, NamespaceHolder, format_map, \
    spawn_holder
from runtimed.sandbox.idmapped import _working_directory, closed_ancestor
from runtimed.sandbox.namespaces import umount
from runtimed.userns import idmap
from runtimed.userns.idmap import IdmapError, idmapped_bind

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (user namespaces)")
MAP = IdMapping(container_id=0, host_id=1_000_000, length=65536)


def _mounts(under: Path) -> list[str]:
    """Mount points at or below `under` (other tests on this machine mount elsewhere)."""
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(under))]


@pytest.fixture
def userns() -> Iterator[int]:
    """An fd of a fresh user namespace mapping 0 -> 1000000 (x65536)."""
    holder = spawn_holder(["user"])
    try:
        holder.write_maps([MAP], [MAP])
        fd = os.open(holder.ns_path("user"), os.O_RDONLY | os.O_CLOEXEC)
    finally:
        holder.release()
    yield fd
    os.close(fd)


def test_struct_and_numbers_are_the_kernels() -> None:
    # include/uapi/linux/mount.h: MOUNT_ATTR_SIZE_VER0 32; the generic syscall table.
    assert idmap.MOUNT_ATTR_SIZE_VER0 == 32
    assert (idmap.SYS_OPEN_TREE, idmap.SYS_MOVE_MOUNT, idmap.SYS_MOUNT_SETATTR) == (
        428, 429, 442)


@root_only
def test_idmapped_bind_shows_the_mapping_and_detaches(tmp_path: Path, userns: int) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "f").write_text("x")
    os.chown(src / "f", 7, 8)
    idmapped_bind(src, dst, userns)
    try:
        st = os.stat(dst / "f")
        assert (st.st_uid, st.st_gid) == (1_000_007, 1_000_008)
    finally:
        umount(dst)
    assert _mounts(tmp_path) == []


@root_only
def test_missing_source_names_open_tree(tmp_path: Path, userns: int) -> None:
    with pytest.raises(IdmapError) as err:
        idmapped_bind(tmp_path / "nope", tmp_path, userns)
    assert err.value.errno == errno.ENOENT
    assert str(err.value).startswith(f"[Errno 2] open_tree {tmp_path / 'nope'}")


@root_only
def test_not_a_user_namespace_names_mount_setattr(tmp_path: Path) -> None:
    before = _mounts(tmp_path)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(IdmapError) as err:
            idmapped_bind(tmp_path, tmp_path, fd)
    finally:
        os.close(fd)
    assert "mount_setattr" in str(err.value)
    assert err.value.errno in (errno.EINVAL, errno.EBADF)
    assert _mounts(tmp_path) == before  # the clone was never attached


@root_only
def test_missing_target_names_move_mount_and_leaves_nothing(tmp_path: Path,
                                                             userns: int) -> None:
    before = _mounts(tmp_path)
    with pytest.raises(IdmapError) as err:
        idmapped_bind(tmp_path, tmp_path / "no-target", userns)
    assert err.value.errno == errno.ENOENT
    assert f"move_mount {tmp_path / 'no-target'}" in str(err.value)
    assert _mounts(tmp_path) == before


def test_enosys_says_which_kernel_is_needed(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    def no_such_syscall(number: int, *args: Any) -> int:
        ctypes.set_errno(errno.ENOSYS)
        return -1

    monkeypatch.setattr(idmap, "_syscall", no_such_syscall)
    with pytest.raises(IdmapError, match=r"open_tree .*needs Linux 5\.2"):
        idmapped_bind(tmp_path, tmp_path, 0)


def test_closed_ancestor_is_found() -> None:
    # Under /tmp (1777), not pytest's tmp_path, whose parents are 0700 themselves.
    top = Path(tempfile.mkdtemp(prefix="crib-unit-", dir="/tmp"))
    try:
        inner = top / "a" / "b"
        inner.mkdir(parents=True)
        os.chmod(top, 0o755)
        os.chmod(top / "a", 0o700)
        assert closed_ancestor(inner) == top / "a"
        os.chmod(top / "a", 0o711)
        assert closed_ancestor(inner) is None
        assert closed_ancestor(top / "missing") == top / "missing"
    finally:
        shutil.rmtree(top)


def test_format_map() -> None:
    assert format_map([MAP, IdMapping(65536, 5, 1)]) == "0 1000000 65536\n65536 5 1\n"


@root_only
def test_holder_errors_carry_the_reason() -> None:
    with pytest.raises(HolderError, match="kinds \\['mnt'\\]; each one of user, ipc"):
        spawn_holder(["mnt"])
    # The tool's own words: nsenter cannot join what is not a user namespace.
    with pytest.raises(HolderError, match="^namespace holder .*failed: nsenter: reassociate to namespace 'ns/user'"):
        spawn_holder(["net"], join_userns="/proc/self/ns/net")
    holder = spawn_holder(["user"])
    try:
        holder.write_maps([MAP], [MAP])
        # A user namespace's map is written once (user_namespaces(7)).
        with pytest.raises(HolderError, match="writing uid_map '0 1000000 65536'"):
            holder.write_maps([MAP], [MAP])
    finally:
        holder.release()
    assert holder.proc.returncode is not None
    assert isinstance(holder, NamespaceHolder)


@root_only
def test_overlay_over_idmapped_layers(tmp_path: Path) -> None:
    """The lower layers are seen through the mapping, the upper directory is the mapped
    root's, and the ID-mapped layers are gone once the overlay is up; a layer that cannot
    be mapped fails the mount and leaves the layer store as it was, nothing mounted."""
    from crib_common.errors import InvalidArgument
    from crib_common.models.imaged import Mount
    from runtimed.sandbox.idmapped import mount_overlay_idmapped
    from runtimed.userns.mappings import PodUserns

    lower, upper, work = tmp_path / "lower", tmp_path / "upper", tmp_path / "work"
    for d in (lower, upper, work):
        d.mkdir()
    (lower / "f").write_text("from the image")
    holder = spawn_holder(["user"])
    try:
        holder.write_maps([MAP], [MAP])
        pin = tmp_path / "user"
        pin.touch()
        import ctypes as c

        libc = c.CDLL("libc.so.6", use_errno=True)
        assert libc.mount(holder.ns_path("user").encode(), str(pin).encode(), None,
                          c.c_ulong(4096), None) == 0
    finally:
        holder.release()
    pod = PodUserns(uids=(MAP,), gids=(MAP,))
    merged = tmp_path / "rootfs"
    try:
        mounts = [Mount(type="overlay", source="overlay", options=[
            f"lowerdir={lower}", f"upperdir={upper}", f"workdir={work}"])]
        mount_overlay_idmapped(mounts, merged, str(pin), pod.root, tmp_path / ".idmap")
        try:
            assert os.stat(merged / "f").st_uid == MAP.host_id
            assert os.stat(upper).st_uid == MAP.host_id
            assert _mounts(tmp_path) == [str(pin), str(merged)]
            assert not (tmp_path / ".idmap").exists()
        finally:
            umount(merged)
        bad = [Mount(type="overlay", source="overlay", options=[
            f"lowerdir={lower}:{tmp_path / 'missing'}", f"upperdir={upper}",
            f"workdir={work}"])]
        with pytest.raises(InvalidArgument, match="ID-mapping .*missing: No such file"):
            mount_overlay_idmapped(bad, merged, str(pin), pod.root, tmp_path / ".idmap")
        assert _mounts(tmp_path) == [str(pin)]
        assert (lower / "f").read_text() == "from the image"
        assert os.stat(lower / "f").st_uid == 0  # nothing chowned in the layer
    finally:
        umount(pin)


def test_working_directory_is_the_threads_own(tmp_path: Path) -> None:
    """The overlay over ID-mapped layers is mounted from the clones' directory, with
    relative names: only the mounting thread moves there, and comes back."""
    here = os.getcwd()
    seen: dict[str, str] = {}
    entered = threading.Event()
    leave = threading.Event()

    def mount_thread() -> None:
        with _working_directory(tmp_path):
            seen["inside"] = os.getcwd()
            entered.set()
            leave.wait(5)
        seen["after"] = os.getcwd()

    thread = threading.Thread(target=mount_thread)
    thread.start()
    assert entered.wait(5)
    seen["main meanwhile"] = os.getcwd()
    leave.set()
    thread.join(5)
    assert seen == {"inside": str(tmp_path), "main meanwhile": here, "after": here}
