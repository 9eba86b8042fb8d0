"""Apply one layer tar to an empty directory, safely and fast (runs in a worker thread).

The layer is streamed: blob file -> decompressor (gzip, zstd or none) -> sha256 of the
uncompressed bytes (must equal the config's diff_id, image spec `config.md` rootfs) ->
tarfile in stream mode -> files. Ownership, modes, timestamps, xattrs (PAX
`SCHILY.xattr.*`), hardlinks, symlinks, device nodes and FIFOs are kept.

OCI whiteouts (image spec `layer.md` "Whiteouts") become overlayfs whiteouts so the
directory can be a lowerdir as is: `.wh.NAME` -> character device 0/0 named NAME;
`DIR/.wh..wh..opq` -> xattr `trusted.overlay.opaque=y` on DIR (kernel
`Documentation/filesystems/overlayfs.rst`).

Safety: nothing may land outside the directory. An absolute name, a `..` component, a
parent that is a symlink (or not a directory), or a hardlink naming anything outside the
layer raises `UnsafeLayer`; the caller then deletes the whole directory. Symlink *targets*
are stored verbatim and never followed here (they resolve inside the container's root).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import zstandard

from crib_common.errors import InvalidArgument

__all__ = ["UnpackCancelled", "UnsafeLayer", "UnpackStats", "unpack_layer"]

CHUNK = 1 << 20
WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"


class UnsafeLayer(InvalidArgument):
    """A layer entry would escape its directory or is otherwise malformed."""


class UnpackCancelled(Exception):
    """The pull that wanted this layer went away; the partial directory is dropped."""


@dataclass
class UnpackStats:
    bytes: int = 0
    inodes: int = 0
    entries: int = 0


class _HashingReader:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.hash = hashlib.sha256()
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.inner.read(size if size and size > 0 else CHUNK)
        if data:
            self.hash.update(data)
            self.total += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def _open_stream(raw: IO[bytes], compression: str) -> Any:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK,
                                                          read_across_frames=True)
    if compression == "none":
        return raw
    raise InvalidArgument(f"unsupported layer compression {compression!r}")


def _clean(name: str, what: str = "entry") -> str:
    if name.startswith("/"):
        raise UnsafeLayer(f"layer {what} {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayer(f"layer {what} {name!r} leaves the layer with '..'")
    return "/".join(parts)


class _Unpacker:
    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.safe: set[str] = {""}
        self.dirs: list[tuple[str, int]] = []
        self.stats = UnpackStats()

    def _abs(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _ensure_dir(self, rel: str, entry: str, create: bool = True) -> None:
        """Make sure `rel` is a real directory inside the layer (never via a symlink)."""
        if rel in self.safe:
            return
        cur = ""
        for comp in rel.split("/"):
            cur = f"{cur}/{comp}" if cur else comp
            if cur in self.safe:
                continue
            full = self._abs(cur)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                if not create:
                    raise UnsafeLayer(f"layer hardlink {entry!r} names {cur!r}, which is "
                                      "not in this layer") from None
                os.mkdir(full, 0o755)
                self.stats.inodes += 1
                self.safe.add(cur)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeLayer(f"layer entry {entry!r} goes through the symlink {cur!r}")
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafeLayer(f"layer entry {entry!r} goes through the non-directory "
                                  f"{cur!r}")
            self.safe.add(cur)

    def _clear(self, rel: str, keep_dir: bool) -> bool:
        """Remove what is at `rel` before an entry replaces it; True if a dir is kept."""
        full = self._abs(rel)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            shutil.rmtree(full)
            self.safe = {s for s in self.safe if s != rel and not s.startswith(rel + "/")}
        else:
            os.unlink(full)
        return False

    def _owner_mode_time(self, full: str, info: tarfile.TarInfo, is_link: bool) -> None:
        os.lchown(full, info.uid, info.gid)
        if not is_link:
            os.chmod(full, stat.S_IMODE(info.mode))
        os.utime(full, (info.mtime, info.mtime), follow_symlinks=False)

    def _xattrs(self, full: str, info: tarfile.TarInfo) -> None:
        for key, value in info.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr."):]
            # A layer may not forge overlayfs' own metadata; whiteouts come only from .wh.
            if name.startswith("trusted.overlay."):
                continue
            try:
                os.setxattr(full, name, value.encode("utf-8", "surrogateescape"),
                            follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise

    def apply(self, info: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        self.stats.entries += 1
        rel = _clean(info.name)
        parent, _, base = rel.rpartition("/")
        if not rel:
            # "./": the layer root itself; only its metadata applies.
            if info.isdir():
                os.lchown(self.root, info.uid, info.gid)
                os.chmod(self.root, stat.S_IMODE(info.mode))
                self.dirs.append((self.root, int(info.mtime)))
            return
        self._ensure_dir(parent, info.name)
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent, base, info)
            return
        full = self._abs(rel)
        if info.isdir():
            if not self._clear(rel, keep_dir=True):
                os.mkdir(full, 0o700)
                self.stats.inodes += 1
                self.stats.bytes += 4096
            self.safe.add(rel)
            os.lchown(full, info.uid, info.gid)
            os.chmod(full, stat.S_IMODE(info.mode))
            self._xattrs(full, info)
            self.dirs.append((full, int(info.mtime)))
            return
        self._clear(rel, keep_dir=False)
        if info.isreg():
            self._file(full, info, tar)
        elif info.issym():
            os.symlink(info.linkname, full)
            self.stats.inodes += 1
            self._owner_mode_time(full, info, is_link=True)
            self._xattrs(full, info)
        elif info.islnk():
            target = _clean(info.linkname, "hardlink target")
            tparent = target.rpartition("/")[0]
            self._ensure_dir(tparent, info.name, create=False)
            tfull = self._abs(target)
            try:
                tst = os.lstat(tfull)
            except FileNotFoundError:
                raise UnsafeLayer(f"layer hardlink {info.name!r} names {info.linkname!r}, "
                                  "which is not in this layer") from None
            if stat.S_ISDIR(tst.st_mode):
                raise UnsafeLayer(f"layer hardlink {info.name!r} names a directory")
            os.link(tfull, full, follow_symlinks=False)
        elif info.ischr() or info.isblk():
            kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK
            os.mknod(full, kind | 0o600, os.makedev(info.devmajor, info.devminor))
            self.stats.inodes += 1
            self._owner_mode_time(full, info, is_link=False)
        elif info.isfifo():
            os.mkfifo(full, 0o600)
            self.stats.inodes += 1
            self._owner_mode_time(full, info, is_link=False)
        else:
            raise UnsafeLayer(f"layer entry {info.name!r} has unsupported type {info.type!r}")

    def _file(self, full: str, info: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            src = tar.extractfile(info)
            if src is not None and info.size:
                remaining = info.size
                while remaining:
                    chunk = src.read(min(CHUNK, remaining))
                    if not chunk:
                        raise UnsafeLayer(f"layer entry {info.name!r} is truncated")
                    remaining -= len(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
            # chown before chmod: chown clears set-user-ID bits.
            os.fchown(fd, info.uid, info.gid)
            os.fchmod(fd, stat.S_IMODE(info.mode))
        finally:
            os.close(fd)
        os.utime(full, (info.mtime, info.mtime))
        self._xattrs(full, info)
        self.stats.inodes += 1
        self.stats.bytes += (info.size + 4095) // 4096 * 4096

    def _whiteout(self, parent: str, base: str, info: tarfile.TarInfo) -> None:
        if base == OPAQUE:
            os.setxattr(self._abs(parent), OPAQUE_XATTR, b"y")
            return
        name = base[len(WHITEOUT_PREFIX):]
        if not name or name in (".", ".."):
            raise UnsafeLayer(f"layer whiteout {info.name!r} names nothing")
        rel = f"{parent}/{name}" if parent else name
        self._clear(rel, keep_dir=False)
        full = self._abs(rel)
        # overlayfs whiteout: a character device with device number 0/0.
        os.mknod(full, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        os.lchown(full, info.uid, info.gid)
        self.stats.inodes += 1

    def finish(self) -> None:
        # Directory mtimes last: creating children changed them.
        for full, mtime in reversed(self.dirs):
            with contextlib.suppress(FileNotFoundError):
                os.utime(full, (mtime, mtime), follow_symlinks=False)


def unpack_layer(blob: Path, compression: str, dest: Path, diff_id: str,
                 cancel: threading.Event | None = None) -> UnpackStats:
    """Unpack `blob` into the empty directory `dest`; verify the uncompressed digest.

    Raises UnsafeLayer / InvalidArgument; the caller removes `dest` on any error."""
    dest.mkdir(mode=0o755, parents=False, exist_ok=True)
    with open(blob, "rb", buffering=CHUNK) as raw:
        try:
            stream = _open_stream(raw, compression)
            hashing = _HashingReader(stream)
            unpacker = _Unpacker(dest)
            with tarfile.open(fileobj=hashing, mode="r|", bufsize=CHUNK) as tar:  # type: ignore[call-overload]
                for info in tar:
                    if cancel is not None and cancel.is_set():
                        raise UnpackCancelled(f"unpack of {diff_id} cancelled")
                    unpacker.apply(info, tar)
            unpacker.finish()
            hashing.drain()
        except (tarfile.TarError, EOFError, OSError, zstandard.ZstdError) as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise InvalidArgument(f"layer {blob.name[:12]} is not a valid "
                                  f"{compression} tar: {exc}") from None
    actual = "sha256:" + hashing.hash.hexdigest()
    if actual != diff_id:
        raise InvalidArgument(f"layer diff_id mismatch: config says {diff_id}, "
                              f"uncompressed content is {actual}")
    return unpacker.stats
