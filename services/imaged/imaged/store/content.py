"""Content-addressed blob store with an ingest area (containerd `content/local` shape).

    <root>/blobs/sha256/<hex>        verified content, read-only once renamed in
    <root>/ingest/<hex>.<rand>.part  downloads in progress

A blob is written to the ingest area while its sha256 and length are computed; `commit`
compares both with the descriptor, fsyncs the file, renames it into `blobs/` and fsyncs the
directory (containerd's `writer.Commit` then `syncDir`). A mismatch deletes the part file,
so nothing is ever stored under a digest it does not match. After a crash the ingest area
holds only garbage and is swept at start; a file under `blobs/` was verified before rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from pathlib import Path

from crib_common.errors import InvalidArgument

__all__ = ["ContentStore", "IngestWriter", "DigestMismatch"]


class DigestMismatch(InvalidArgument):
    """Content did not match its descriptor (digest or size)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class IngestWriter:
    """One download into the ingest area; `write` then `commit` (or `abort`)."""

    def __init__(self, store: ContentStore, digest: str, expected_size: int | None) -> None:
        self.store = store
        self.digest = digest
        self.expected_size = expected_size
        algo = digest.split(":", 1)[0]
        if algo != "sha256" and algo != "sha512":
            raise InvalidArgument(f"unsupported digest algorithm in {digest!r}")
        self._hash = hashlib.new(algo)
        self.path = store.ingest / f"{digest.split(':', 1)[1]}.{secrets.token_hex(4)}.part"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.written = 0

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


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.ingest = root / "ingest"
        (self.blobs / "sha256").mkdir(parents=True, exist_ok=True)
        self.ingest.mkdir(parents=True, exist_ok=True)

    def sweep_ingest(self) -> int:
        """Drop every partial download (after a crash none can be trusted)."""
        count = 0
        for entry in self.ingest.iterdir():
            count += 1
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
        return count

    def path_of(self, digest: str) -> Path:
        algo, _, hexd = digest.partition(":")
        return self.blobs / algo / hexd

    def has(self, digest: str) -> bool:
        return self.path_of(digest).is_file()

    def size(self, digest: str) -> int:
        return self.path_of(digest).stat().st_size

    def read(self, digest: str) -> bytes:
        return self.path_of(digest).read_bytes()

    def writer(self, digest: str, expected_size: int | None) -> IngestWriter:
        return IngestWriter(self, digest, expected_size)

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
