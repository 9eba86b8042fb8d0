"""Content-addressed blob store with an ingest area (containerd `content/local` shape).

    <root>/blobs/sha256/<hex>        verified content, read-only once renamed in
    <root>/ingest/<hex>.<rand>.part  downloads in progress

    <root>/ingest/<hex>.part         a resumable layer download, with
    <root>/ingest/<hex>.ref          its record: {"digest": ..., "size": ...}

A blob is written to the ingest area while its sha256 and length are computed; `commit`
compares both with the descriptor, fsyncs the file, renames it into `blobs/` and fsyncs the
directory (containerd's `writer.Commit` then `syncDir`). A mismatch deletes the part file,
so nothing is ever stored under a digest it does not match; a file under `blobs/` was
verified before rename.

Layer downloads are resumable (containerd keeps ingests by ref for the same reason): the
record is written (temp, fsync, rename) before the first byte, so after a kill -9 a part
file is kept only when a record names its digest and size and it is no longer than that
size. A later writer for that digest re-reads the kept bytes into its hash and carries on
from their end; nothing in them is trusted, the digest check at `commit` covers the whole
blob (and the puller downloads again from zero when spliced content fails it). Every
other ingest entry is garbage after a crash and is swept at start, as are kept parts
older than `INGEST_EXPIRY`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path

from crib_common.errors import InvalidArgument

__all__ = ["ContentStore", "IngestWriter", "DigestMismatch", "INGEST_EXPIRY"]

# A kept partial download older than this is dropped at start (containerd's content GC
# expires stale ingests after a day too).
INGEST_EXPIRY = 24 * 3600.0
_READ_CHUNK = 1 << 20


class DigestMismatch(InvalidArgument):
    """Content did not match its descriptor (digest or size)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class IngestWriter:
    """One download into the ingest area; `write` then `commit` (or `abort`).

    With `resumable` the part file has a fixed name and a record beside it, and bytes a
    killed daemon left there are taken over: `written` starts at their length and
    `resumed` says how many there were."""

    def __init__(self, store: ContentStore, digest: str, expected_size: int | None,
                 resumable: bool = False) -> None:
        self.store = store
        self.digest = digest
        self.expected_size = expected_size
        algo, _, hexd = digest.partition(":")
        if algo != "sha256" and algo != "sha512":
            raise InvalidArgument(f"unsupported digest algorithm in {digest!r}")
        self._algo = algo
        self._hash = hashlib.new(algo)
        self.written = 0
        self.resumed = 0
        # True once the content is more than one straight transfer (resumed after a
        # restart or by a Range request): a digest mismatch then warrants one fresh try.
        self.spliced = False
        self.resumable = resumable and expected_size is not None
        self._fd = -1
        self.record: Path | None
        if self.resumable:
            self.path = store.ingest / f"{hexd}.part"
            self.record = store.ingest / f"{hexd}.ref"
            self._open_resumable()
        else:
            self.path = store.ingest / f"{hexd}.{secrets.token_hex(4)}.part"
            self.record = None
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                               0o600)

    def _open_resumable(self) -> None:
        """Take over a kept part file if its record matches, else start a fresh one."""
        assert self.record is not None
        kept = _read_record(self.record)
        if (kept == (self.digest, self.expected_size) and self.path.is_file()
                and self.path.stat().st_size <= (self.expected_size or 0)):
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            while chunk := os.read(self._fd, _READ_CHUNK):
                self._hash.update(chunk)
                self.written += len(chunk)
            self.resumed = self.written
            self.spliced = self.written > 0
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        # The record goes first and durably: a part file without one is never trusted.
        tmp = self.record.with_suffix(f".{secrets.token_hex(4)}.tmp")
        with open(tmp, "w") as fh:
            json.dump({"digest": self.digest, "size": self.expected_size}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.record)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC
                           | os.O_CLOEXEC, 0o600)

    def reset(self) -> None:
        """Drop what was written and start again from byte zero (a registry ignored a
        Range request, or answered one with the wrong range)."""
        os.ftruncate(self._fd, 0)
        self._hash = hashlib.new(self._algo)
        self.written = 0
        self.spliced = False

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self.expected_size is not None and self.written > self.expected_size:
            raise DigestMismatch(
                f"blob {self.digest} is longer than its descriptor's {self.expected_size} bytes")
        self._hash.update(chunk)
        view = memoryview(chunk)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def commit(self) -> Path:
        """Verify size and digest, then fsync and rename into place (blocking: thread it)."""
        try:
            if self.expected_size is not None and self.written != self.expected_size:
                raise DigestMismatch(
                    f"blob {self.digest} is truncated: got {self.written} of "
                    f"{self.expected_size} bytes")
            actual = f"{self._hash.name}:{self._hash.hexdigest()}"
            if actual != self.digest:
                raise DigestMismatch(f"blob digest mismatch: expected {self.digest}, "
                                     f"content is {actual}")
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            final = self.store.path_of(self.digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(self.path, 0o444)
            os.replace(self.path, final)
            _fsync_dir(final.parent)
            self._drop_record()
            return final
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._drop_record()

    def _drop_record(self) -> None:
        if self.record is not None:
            with contextlib.suppress(FileNotFoundError):
                self.record.unlink()
            self.store._active.discard(self.digest)
            self.record = None


def _read_record(path: Path) -> tuple[str, int] | None:
    """(digest, size) from an ingest record, None if missing or unreadable."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    digest, size = doc.get("digest"), doc.get("size")
    if not isinstance(digest, str) or not isinstance(size, int) or isinstance(size, bool):
        return None
    return digest, size


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.ingest = root / "ingest"
        (self.blobs / "sha256").mkdir(parents=True, exist_ok=True)
        self.ingest.mkdir(parents=True, exist_ok=True)
        # Digests with a resumable writer open: a second writer for one of them (not
        # expected: downloads of a digest are shared) falls back to a private file.
        self._active: set[str] = set()

    def sweep_ingest(self) -> tuple[int, int]:
        """Drop every ingest entry except resumable parts whose record names their digest
        and a size they do not exceed (see module docstring); (swept, kept)."""
        keep: set[str] = set()
        now = time.time()
        for record in self.ingest.glob("*.ref"):
            hexd = record.name[:-len(".ref")]
            part = self.ingest / f"{hexd}.part"
            kept = _read_record(record)
            try:
                st = part.stat()
            except FileNotFoundError:
                continue
            if (kept is not None and kept[0].partition(":")[2] == hexd
                    and st.st_size <= kept[1] and now - st.st_mtime < INGEST_EXPIRY):
                keep |= {record.name, part.name}
        swept = 0
        for entry in self.ingest.iterdir():
            if entry.name in keep:
                continue
            swept += 1
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
        return swept, len(keep) // 2

    def path_of(self, digest: str) -> Path:
        algo, _, hexd = digest.partition(":")
        return self.blobs / algo / hexd

    def has(self, digest: str) -> bool:
        return self.path_of(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path_of(digest).stat().st_size

    def read(self, digest: str) -> bytes:
        return self.path_of(digest).read_bytes()

    def writer(self, digest: str, expected_size: int | None,
               resumable: bool = False) -> IngestWriter:
        """An ingest writer; `resumable` takes over a kept part file (blocking: it may
        hash what is already there)."""
        if resumable and digest in self._active:
            resumable = False
        writer = IngestWriter(self, digest, expected_size, resumable)
        if writer.resumable:
            self._active.add(digest)
        return writer

    def partial(self, digest: str) -> int:
        """Bytes of `digest` a kept resumable download holds (0 if none)."""
        part = self.ingest / f"{digest.partition(':')[2]}.part"
        try:
            return part.stat().st_size
        except FileNotFoundError:
            return 0

    def put(self, digest: str, data: bytes) -> Path:
        """Store small content already in memory (manifests, configs), verified."""
        if self.has(digest):
            return self.path_of(digest)
        writer = self.writer(digest, len(data))
        writer.write(data)
        return writer.commit()

    def delete(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_of(digest).unlink()

    def digests(self) -> list[str]:
        out: list[str] = []
        for algo_dir in self.blobs.iterdir():
            if algo_dir.is_dir():
                out.extend(f"{algo_dir.name}:{p.name}" for p in algo_dir.iterdir())
        return out

    def usage(self) -> tuple[int, int]:
        """(bytes on disk, inodes) of the stored blobs."""
        used, inodes = 0, 0
        for algo_dir in self.blobs.iterdir():
            inodes += 1
            with os.scandir(algo_dir) as it:
                for entry in it:
                    st = entry.stat(follow_symlinks=False)
                    used += st.st_blocks * 512
                    inodes += 1
        return used, inodes
