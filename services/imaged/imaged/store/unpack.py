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
import hashlib
import os
import shutil
import stat
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import IO, Any

import zlib

import zstandard

from crib_common.errors import InvalidArgument

__all__ = ["UnpackCancelled", "UnsafeLayer", "UnpackStats", "unpack_layer"]

CHUNK = 1 << 20
BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
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


class _GzipStream:
    """gzip decompression with big reads and no per-call Python framing (GzipFile costs a
    Python-level loop per 8 KiB); handles multi-member files; zlib checks each member's
    CRC-32 and length trailer (RFC 1952)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.z = zlib.decompressobj(wbits=31)
        self.started = False

    def read(self, size: int = -1) -> bytes:
        while True:
            if self.z.eof:
                rest = self.z.unused_data
                self.z = zlib.decompressobj(wbits=31)
                if not rest:
                    rest = self.raw.read(CHUNK)
                    if not rest:
                        return b""
                out = self.z.decompress(rest)
            else:
                data = self.raw.read(CHUNK)
                if not data:
                    if self.started and not self.z.eof:
                        raise EOFError("gzip stream ends before its trailer")
                    return b""
                self.started = True
                out = self.z.decompress(data)
            if out:
                return out


def _open_stream(raw: IO[bytes], compression: str) -> Any:
    if compression == "gzip":
        return _GzipStream(raw)
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK,
                                                          read_across_frames=True)
    if compression == "none":
        return raw
    raise InvalidArgument(f"unsupported layer compression {compression!r}")


class _TarStream:
    """A lean streaming tar reader (POSIX ustar, PAX and GNU long names; see tar(5)).

    tarfile's stream mode copies every byte through Python-level buffers; here file data
    goes from the decompressed chunk straight to os.write."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.pos = 0
        self.eof = False

    def _fill(self, want: int) -> int:
        """Make at least `want` bytes available if the stream has them; return available."""
        while len(self.buf) - self.pos < want and not self.eof:
            chunk = self.stream.read(CHUNK)
            if not chunk:
                self.eof = True
                break
            if self.pos > CHUNK:
                del self.buf[:self.pos]
                self.pos = 0
            self.buf += chunk
        return len(self.buf) - self.pos

    def take(self, n: int) -> bytes:
        if self._fill(n) < n:
            raise tarfile.ReadError("unexpected end of layer data")
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def skip(self, n: int) -> None:
        while n:
            avail = self._fill(min(n, CHUNK))
            if not avail:
                raise tarfile.ReadError("unexpected end of layer data")
            step = min(avail, n)
            self.pos += step
            n -= step

    def copy_to(self, fd: int, n: int) -> None:
        while n:
            avail = self._fill(1)
            if not avail:
                raise tarfile.ReadError("unexpected end of layer data")
            step = min(avail, n)
            view = memoryview(self.buf)[self.pos:self.pos + step]
            try:
                while view:
                    view = view[os.write(fd, view):]
            finally:
                view.release()
            self.pos += step
            n -= step

    def members(self) -> Iterator[tarfile.TarInfo]:
        pax: dict[str, str] = {}
        long_name = long_link = None
        while True:
            if self._fill(BLOCK) < BLOCK:
                return  # no end-of-archive blocks: tolerated, as GNU tar does
            block = self.take(BLOCK)
            if block == ZERO_BLOCK:
                return
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise tarfile.ReadError(f"bad tar header: {exc}") from None
            padded = (info.size + BLOCK - 1) // BLOCK * BLOCK
            if info.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
                pax.update(_parse_pax(self.take(info.size)))
                self.skip(padded - info.size)
                continue
            if info.type == tarfile.XGLTYPE:
                self.skip(padded)  # global PAX headers carry nothing we apply
                continue
            if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
                value = self.take(info.size).split(b"\0", 1)[0].decode("utf-8",
                                                                        "surrogateescape")
                self.skip(padded - info.size)
                if info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = value
                else:
                    long_link = value
                continue
            if info.type == tarfile.GNUTYPE_SPARSE:
                raise tarfile.ReadError(f"sparse entry {info.name!r} is not supported")
            if long_name is not None:
                info.name = long_name
            if long_link is not None:
                info.linkname = long_link
            if pax:
                _apply_pax(info, pax)
            info.pax_headers = pax
            pax, long_name, long_link = {}, None, None
            if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
                # Only regular files carry data (a hardlink's size is ignored, tar(5)).
                data_size = info.size if info.type not in (tarfile.LNKTYPE, tarfile.SYMTYPE,
                                                           tarfile.DIRTYPE, tarfile.CHRTYPE,
                                                           tarfile.BLKTYPE, tarfile.FIFOTYPE
                                                           ) else 0
                yield info
                self.skip((data_size + BLOCK - 1) // BLOCK * BLOCK)
                continue
            if info.type == tarfile.AREGTYPE and info.name.endswith("/"):
                info.type = tarfile.DIRTYPE
                yield info
                continue
            info.type = tarfile.REGTYPE
            self.data_left = info.size
            yield info
            # The consumer copied `data_left` away (or not): skip the rest and the padding.
            self.skip(self.data_left + (padded - info.size))


def _parse_pax(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(raw):
        space = raw.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(raw[pos:space])
        except ValueError:
            raise tarfile.ReadError("bad PAX header") from None
        if length <= 0 or pos + length > len(raw):
            raise tarfile.ReadError("bad PAX header length")
        record = raw[space + 1:pos + length - 1]
        key, _, value = record.partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _apply_pax(info: tarfile.TarInfo, pax: dict[str, str]) -> None:
    try:
        if "path" in pax:
            info.name = pax["path"]
        if "linkpath" in pax:
            info.linkname = pax["linkpath"]
        if "size" in pax:
            info.size = int(pax["size"])
        if "uid" in pax:
            info.uid = int(pax["uid"])
        if "gid" in pax:
            info.gid = int(pax["gid"])
        if "mtime" in pax:
            info.mtime = int(float(pax["mtime"]))
    except ValueError:
        raise tarfile.ReadError(f"bad PAX value in {info.name!r}") from None


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

    def apply(self, info: tarfile.TarInfo, tar: _TarStream) -> None:
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

    def _file(self, full: str, info: tarfile.TarInfo, tar: _TarStream) -> None:
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            if info.size:
                tar.copy_to(fd, info.size)
                tar.data_left = 0
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
            tar = _TarStream(hashing)
            for info in tar.members():
                if cancel is not None and cancel.is_set():
                    raise UnpackCancelled(f"unpack of {diff_id} cancelled")
                unpacker.apply(info, tar)
            unpacker.finish()
            hashing.drain()
        except (tarfile.TarError, EOFError, OSError, zlib.error, zstandard.ZstdError) as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise InvalidArgument(f"layer {blob.name[:12]} is not a valid "
                                  f"{compression} tar: {exc}") from None
    actual = "sha256:" + hashing.hash.hexdigest()
    if actual != diff_id:
        raise InvalidArgument(f"layer diff_id mismatch: config says {diff_id}, "
                              f"uncompressed content is {actual}")
    return unpacker.stats
