"""Unpacked layers and their short links (overlay2's `l/` directory).

    <root>/layers/<hex of diff_id>/diff        the unpacked layer (a lowerdir)
    <root>/layers/.tmp-<hex>-<rand>/diff       an unpack in progress (swept at start)
    <root>/layers/.rm-<hex>-<rand>             a removal in progress (swept at start)
    <root>/l/<LINK> -> <root>/layers/<hex>/diff  short names keep overlay's option string
                                               under one page for many layers
                                               (`link_dir` setting: a shorter place)

A layer is unpacked once, whatever blob (gzip, zstd, plain) carried it: the directory is
keyed by the uncompressed digest.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import threading
from pathlib import Path

from .unpack import UnpackStats, unpack_layer

__all__ = ["LayerDirs", "disk_usage"]

_LINK_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


class LayerDirs:
    def __init__(self, root: Path, link_dir: Path | None = None) -> None:
        self.layers = root / "layers"
        # A shorter directory for the links fits more layers into one page of options.
        self.links = link_dir or root / "l"
        self.layers.mkdir(parents=True, exist_ok=True)
        self.links.mkdir(parents=True, exist_ok=True)

    def path(self, diff_id: str) -> Path:
        return self.layers / diff_id.split(":", 1)[1]

    def diff(self, diff_id: str) -> Path:
        return self.path(diff_id) / "diff"

    def link_path(self, link: str) -> Path:
        return self.links / link

    def link_target(self, diff_id: str) -> str:
        return str(self.layers / diff_id.split(":", 1)[1] / "diff")

    def exists(self, diff_id: str) -> bool:
        return self.diff(diff_id).is_dir()

    def new_link(self) -> str:
        while True:
            # 5 of 36 symbols: 60 million names, 6 bytes per layer in the option string.
            link = "".join(secrets.choice(_LINK_ALPHABET) for _ in range(5))
            if not os.path.lexists(self.links / link):
                return link

    def unpack(self, blob: Path, compression: str, diff_id: str, link: str,
               cancel: threading.Event | None = None) -> UnpackStats:
        """Unpack into a temp dir, then link and rename into place (blocking: thread it)."""
        hexd = diff_id.split(":", 1)[1]
        tmp = self.layers / f".tmp-{hexd}-{secrets.token_hex(4)}"
        tmp.mkdir(mode=0o700)
        try:
            stats = unpack_layer(blob, compression, tmp / "diff", diff_id, cancel)
            # Record what the layer really occupies (blocks and distinct inodes), for
            # ImageFsInfo; one lstat per entry is cheap next to creating it.
            stats.bytes, stats.inodes = disk_usage(tmp / "diff")
            final = self.path(diff_id)
            link_path = self.links / link
            with contextlib.suppress(FileNotFoundError):
                link_path.unlink()
            link_path.symlink_to(self.link_target(diff_id))
            os.chmod(tmp, 0o700)
            os.replace(tmp, final)
            return stats
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def remove(self, diff_id: str, link: str) -> None:
        """Rename away, drop the link, then delete (blocking: thread it)."""
        path = self.path(diff_id)
        with contextlib.suppress(FileNotFoundError):
            (self.links / link).unlink()
        if path.exists():
            doomed = self.layers / f".rm-{path.name}-{secrets.token_hex(4)}"
            os.replace(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def sweep(self) -> list[str]:
        """Drop half-unpacked and half-removed directories; return what was dropped."""
        dropped = []
        for entry in self.layers.iterdir():
            if entry.name.startswith((".tmp-", ".rm-")):
                shutil.rmtree(entry, ignore_errors=True)
                dropped.append(entry.name)
        return dropped

    def on_disk(self) -> set[str]:
        return {f"sha256:{e.name}" for e in self.layers.iterdir() if not e.name.startswith(".")}

    def dangling_links(self, keep: set[str]) -> list[str]:
        out = []
        for entry in self.links.iterdir():
            if entry.name not in keep:
                out.append(entry.name)
        return out


def disk_usage(path: Path) -> tuple[int, int]:
    """(bytes in allocated blocks, distinct inodes) under `path`, hardlinks counted once."""
    seen: set[int] = set()
    st = os.lstat(path)
    used, inodes = st.st_blocks * 512, 1
    stack = [str(path)]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                for entry in it:
                    est = entry.stat(follow_symlinks=False)
                    if est.st_nlink > 1:
                        if est.st_ino in seen:
                            continue
                        seen.add(est.st_ino)
                    used += est.st_blocks * 512
                    inodes += 1
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except FileNotFoundError:
            continue
    return used, inodes
