"""The layer unpacker on its own: formats, long names, PAX, whiteouts and refusals."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from crib_common.errors import InvalidArgument
from imaged.store.unpack import UnsafeLayer, unpack_layer
from tests.support.images import Entry, Layer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod)")


def _unpack(tmp_path: Path, layer: Layer) -> Path:
    blob = tmp_path / "blob"
    blob.write_bytes(layer.blob)
    out = tmp_path / "out"
    unpack_layer(blob, layer.compression, out, layer.diff_id)
    return out


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_long_names_and_formats(tmp_path: Path, compression: str) -> None:
    long = "d" * 120 + "/" + "f" * 150
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            name = long if fmt != tarfile.USTAR_FORMAT else "d" * 90 + "/" + "f" * 60
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid = 3, 0o640, 4242
            tar.addfile(info, io.BytesIO(b"abc"))
            link = tarfile.TarInfo("l" * 200 if fmt != tarfile.USTAR_FORMAT else "l")
            link.type, link.linkname = tarfile.SYMTYPE, "t" * 300 if fmt != \
                tarfile.USTAR_FORMAT else "t"
            tar.addfile(link)
        d = tmp_path / f"{fmt}"
        d.mkdir()
        out = _unpack(d, Layer.from_tar(buf.getvalue(), compression))  # type: ignore[arg-type]
        assert (out / name).read_bytes() == b"abc"
        st = os.stat(out / name)
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o640, 4242)
        assert os.readlink(out / link.name) == link.linkname


def test_later_entry_replaces_earlier(tmp_path: Path) -> None:
    out = _unpack(tmp_path, Layer.from_entries([
        Entry.file("a", "one"), Entry.file("a", "two"),
        Entry.dir("d"), Entry.file("d/x", "x"), Entry.symlink("d", "elsewhere"),
    ]))
    assert (out / "a").read_text() == "two"
    assert os.readlink(out / "d") == "elsewhere"


def test_whiteout_in_same_layer_and_opaque(tmp_path: Path) -> None:
    out = _unpack(tmp_path, Layer.from_entries([
        Entry.file("keep/a", "a"), Entry.whiteout("keep/b"), Entry.opaque("op"),
    ]))
    st = os.lstat(out / "keep/b")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(out / "op", "trusted.overlay.opaque") == b"y"


def test_forged_overlay_xattr_ignored(tmp_path: Path) -> None:
    out = _unpack(tmp_path, Layer.from_entries([
        Entry.dir("d", xattrs={"trusted.overlay.opaque": b"y", "user.ok": b"1"})]))
    with pytest.raises(OSError):
        os.getxattr(out / "d", "trusted.overlay.opaque")
    assert os.getxattr(out / "d", "user.ok") == b"1"


def test_diff_id_mismatch(tmp_path: Path) -> None:
    layer = Layer.from_entries([Entry.file("a", "a")])
    blob = tmp_path / "blob"
    blob.write_bytes(layer.blob)
    with pytest.raises(InvalidArgument, match="diff_id mismatch"):
        unpack_layer(blob, "gzip", tmp_path / "out", "sha256:" + "0" * 64)


def test_corrupt_streams(tmp_path: Path) -> None:
    layer = Layer.from_entries([Entry.file("a", "a" * 100000)])
    blob = tmp_path / "blob"
    blob.write_bytes(layer.blob[: len(layer.blob) // 2])
    with pytest.raises(InvalidArgument, match="not a valid gzip tar"):
        unpack_layer(blob, "gzip", tmp_path / "o1", layer.diff_id)
    blob.write_bytes(b"not gzip at all")
    with pytest.raises(InvalidArgument, match="not a valid gzip tar"):
        unpack_layer(blob, "gzip", tmp_path / "o2", layer.diff_id)
    blob.write_bytes(b"\x01" * 1024)
    with pytest.raises(InvalidArgument, match="not a valid none tar"):
        unpack_layer(blob, "none", tmp_path / "o3", "sha256:" + "0" * 64)


def test_device_through_symlinked_parent_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeLayer, match="through the symlink"):
        _unpack(tmp_path, Layer.from_entries([
            Entry.symlink("etc", "/etc"), Entry.char("etc/evil", 1, 3)]))
    with pytest.raises(UnsafeLayer, match="through the non-directory"):
        _unpack(tmp_path / "x" if (tmp_path / "x").mkdir() is None else tmp_path,
                Layer.from_entries([Entry.file("f", "x"), Entry.file("f/g", "y")]))
