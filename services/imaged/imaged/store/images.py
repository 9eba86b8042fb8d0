"""ImageStore: images, layers and snapshots in memory, backed by the StateStore and dirs.

    <root>/state.db           records (see `records.py`)
    <root>/blobs, ingest      content store (see `content.py`)
    <root>/layers, l          unpacked layers (see `layers.py`)
    <root>/snapshots/<key>/{fs,work}   writable layers of containers

Invariants: memory is updated only after the StateStore committed; an image record names
only blobs on disk and recorded layers, or says in `missing` which blobs are not and why
(`records.py`), and `commit_image` checks the disk under the lock before it writes; a
layer or blob is garbage once no image, no snapshot and no in-flight pull (a lease) names
it. Mutations of records and garbage collection run under one asyncio lock; downloads and
unpacks run outside it, holding leases (containerd's leases, in memory: a kill -9 ends
every pull, and recovery collects what they left) so a concurrent collection cannot take
what they are about to reference.

Recovery (`recover`, before the daemon is ready) is in `recovery.py`: it repairs what it
can (an image whose layers are all unpacked is kept, absent blobs marked) and reports what
it drops.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import structlog

from crib_common.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from crib_common.models.imaged import Mount
from crib_common.state import StateStore

from ..oci.reference import parse_reference
from .content import ContentStore
from .layers import LayerDirs, disk_usage
from .records import DroppedImage, ImageRecord, LayerRecord, SnapshotRecord
from .recovery import recover

__all__ = ["ImageStore", "SNAPSHOT_KEY"]

log = structlog.get_logger("imaged.store")

SNAPSHOT_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# mount(2) copies at most one page of options (PAGE_SIZE, 4096 on x86-64).
MOUNT_OPTIONS_MAX = 4096
_HEX_PREFIX = re.compile(r"^(?:sha256:)?[a-f0-9]{3,64}$")


def _now_ns() -> int:
    return time.time_ns()


class ImageStore:
    def __init__(self, root: Path, link_dir: Path | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.state = StateStore(root / "state.db")
        self.content = ContentStore(root)
        self.layers = LayerDirs(root, link_dir)
        self.snapshot_dir = root / "snapshots"
        self.snapshot_dir.mkdir(exist_ok=True)
        self.images: dict[str, ImageRecord] = {}
        self.layer_records: dict[str, LayerRecord] = {}
        self.snapshots: dict[str, SnapshotRecord] = {}
        # Images recovery could not keep, until an operator clears them (`clear_dropped`).
        self.dropped: dict[str, DroppedImage] = {}
        self.lock = asyncio.Lock()
        # Names of images the kubelet must not garbage-collect (the pause image).
        self.pinned_names: set[str] = set()
        self.leases: collections.Counter[str] = collections.Counter()
        self.ready = False
        # overlayfs' inode index must be off for lowers shared by many mounts (containerd
        # adds index=off whenever the module knows the parameter).
        self._index_off = Path("/sys/module/overlay/parameters/index").exists()

    def close(self) -> None:
        self.state.close()

    # ---------------------------------------------------------------- leases
    @contextlib.contextmanager
    def lease(self, *names: str) -> Iterator[None]:
        """Keep blobs/layers named here from garbage collection while held."""
        for name in names:
            self.leases[name] += 1
        try:
            yield
        finally:
            for name in names:
                self.leases[name] -= 1
                if self.leases[name] <= 0:
                    del self.leases[name]

    # ---------------------------------------------------------------- recovery
    def recover(self) -> dict[str, int]:
        """Reconcile records with the disk (see `recovery.py`); blocking."""
        report = recover(self)
        self.ready = True
        return report

    def clear_dropped(self) -> list[str]:
        """Forget the images recovery dropped (an operator has seen the report)."""
        ids = list(self.dropped)
        with self.state.transaction():
            for image_id in ids:
                self.state.delete("dropped", image_id)
        self.dropped.clear()
        return ids

    def absent(self, img: ImageRecord) -> list[str]:
        """Blobs `img` names that are not on disk, whether marked missing or not."""
        return [d for d in img.content if not self.content.has(d)]

    # ---------------------------------------------------------------- lookup
    def resolve(self, ref: str) -> ImageRecord:
        """An image by ID, unique ID prefix, tag or digest reference; NotFound otherwise."""
        found = self.find(ref)
        if found is None:
            raise NotFound(f"image {ref!r} not found")
        return found

    def find(self, ref: str) -> ImageRecord | None:
        text = ref.strip()
        if not text:
            raise InvalidArgument("image reference is empty")
        if text in self.images:
            return self.images[text]
        if _HEX_PREFIX.match(text):
            want = text if text.startswith("sha256:") else "sha256:" + text
            matches = [i for i in self.images.values() if i.id.startswith(want)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise InvalidArgument(f"image ID prefix {ref!r} is ambiguous")
            if len(text) == 64 or text.startswith("sha256:"):
                return None
        parsed = parse_reference(text)
        name = str(parsed)
        for img in self.images.values():
            if name in img.repo_tags or name in img.repo_digests:
                return img
        if parsed.digest:
            # Pulled through an index, or known by another repository name.
            for img in self.images.values():
                if parsed.digest == img.manifest_digest and any(
                        d.startswith(parsed.repository + "@") for d in img.repo_digests):
                    return img
        return None

    def layer_exists(self, diff_id: str) -> bool:
        return diff_id in self.layer_records

    # ---------------------------------------------------------------- records
    def put_layer(self, rec: LayerRecord) -> None:
        self.state.put("layer", rec.diff_id, rec)
        self.layer_records[rec.diff_id] = rec

    async def commit_image(self, img: ImageRecord, tag: str | None, repo_digest: str) -> ImageRecord:
        """Store a pulled image: move `tag` to it, add `repo_digest`; one transaction."""
        async with self.lock:
            current = self.images.get(img.id)
            if current is not None:
                img = current.model_copy(deep=True, update={"content": sorted(
                    set(current.content) | set(img.content))})
            changed: list[ImageRecord] = []
            if tag:
                for other in self.images.values():
                    if other.id != img.id and tag in other.repo_tags:
                        moved = other.model_copy(deep=True)
                        moved.repo_tags.remove(tag)
                        changed.append(moved)
                if tag not in img.repo_tags:
                    img.repo_tags.append(tag)
            if repo_digest and repo_digest not in img.repo_digests:
                img.repo_digests.append(repo_digest)
            img.pinned = bool(self.pinned_names & set(img.repo_tags + img.repo_digests))
            img.missing = self._check_whole(img, current)
            was_dropped = img.id in self.dropped
            with self.state.transaction():
                for other in changed:
                    self.state.put("image", other.id, other)
                self.state.put("image", img.id, img)
                if was_dropped:
                    self.state.delete("dropped", img.id)
            if was_dropped:
                del self.dropped[img.id]
                log.info("dropped image pulled again", image=img.id)
            for other in changed:
                self.images[other.id] = other
                log.info("tag moved", tag=tag, old_image=other.id, new_image=img.id)
            self.images[img.id] = img
            return img

    def _check_whole(self, img: ImageRecord, current: ImageRecord | None) -> dict[str, str]:
        """The invariant (`records.py`), checked on the disk before a record is written:
        every blob the image names is on disk, or was already marked missing in the
        stored record (a blob of another pull path the new pull did not touch). Anything
        else is a bug in the pull, refused rather than stored. Returns the marks that
        still hold."""
        known = current.missing if current is not None else {}
        absent = self.absent(img)
        unexplained = [d for d in absent if d not in known]
        if unexplained:
            raise Internal(f"image {img.id} would name blobs not on disk: "
                           f"{', '.join(unexplained[:3])}")
        lost = [lay.diff_id for lay in img.layers if lay.diff_id not in self.layer_records]
        if lost:
            raise Internal(f"image {img.id} would name layers not unpacked: "
                           f"{', '.join(lost[:3])}")
        return {d: known[d] for d in absent}

    async def remove_image(self, ref: str, untag_only: bool = False,
                           collect: bool = True) -> list[str]:
        """Remove an image (all its names) or, with `untag_only`, the one tag `ref` while
        the image keeps other tags. Missing is success (CRI RemoveImage is idempotent).
        Returns the names removed."""
        async with self.lock:
            img = self.find(ref)
            if img is None:
                return []
            name = ref.strip()
            with contextlib.suppress(InvalidArgument):
                name = str(parse_reference(name))
            if untag_only and name in img.repo_tags and len(img.repo_tags) > 1:
                updated = img.model_copy(deep=True)
                updated.repo_tags.remove(name)
                self.state.put("image", img.id, updated)
                self.images[img.id] = updated
                log.info("image untagged", image=img.id, tag=name)
                return [name]
            self.state.delete("image", img.id)
            del self.images[img.id]
            log.info("image removed", image=img.id, tags=img.repo_tags)
            if collect:
                await self._collect()
            return img.repo_tags + img.repo_digests or [img.id]

    # ---------------------------------------------------------------- garbage
    async def collect(self) -> tuple[int, int]:
        async with self.lock:
            return await self._collect()

    async def _collect(self) -> tuple[int, int]:
        blobs, doomed_layers = self._garbage()
        for digest in blobs:
            self.content.delete(digest)
        for rec in doomed_layers:
            self.state.delete("layer", rec.diff_id)
            self.layer_records.pop(rec.diff_id, None)
        if doomed_layers:
            await asyncio.to_thread(self._remove_layer_dirs, doomed_layers)
        if blobs or doomed_layers:
            log.info("garbage collected", blobs=len(blobs), layers=len(doomed_layers))
        return len(blobs), len(doomed_layers)

    def collect_sync(self) -> tuple[int, int]:
        """`collect` without the lock, for recovery before the daemon serves (blocking)."""
        blobs, doomed_layers = self._garbage()
        for digest in blobs:
            self.content.delete(digest)
        for rec in doomed_layers:
            self.state.delete("layer", rec.diff_id)
            self.layer_records.pop(rec.diff_id, None)
        self._remove_layer_dirs(doomed_layers)
        return len(blobs), len(doomed_layers)

    def _garbage(self) -> tuple[list[str], list[LayerRecord]]:
        live_blobs = {d for img in self.images.values() for d in img.content}
        live_layers = {lay.diff_id for img in self.images.values() for lay in img.layers}
        live_layers |= {d for snap in self.snapshots.values() for d in snap.diff_ids}
        blobs = [d for d in self.content.digests()
                 if d not in live_blobs and d not in self.leases]
        layers = [rec for rec in self.layer_records.values()
                  if rec.diff_id not in live_layers and rec.diff_id not in self.leases]
        return blobs, layers

    def _remove_layer_dirs(self, records: list[LayerRecord]) -> None:
        for rec in records:
            self.layers.remove(rec.diff_id, rec.link)

    # ---------------------------------------------------------------- snapshots
    async def prepare_snapshot(self, key: str, image_ref: str,
                               labels: dict[str, str]) -> SnapshotRecord:
        if not SNAPSHOT_KEY.match(key):
            raise InvalidArgument(f"invalid snapshot key {key!r} (letters, digits, '_.-', "
                                  "at most 128)")
        async with self.lock:
            if key in self.snapshots:
                raise AlreadyExists(f"snapshot {key} already exists")
            img = self.resolve(image_ref)
            rec = SnapshotRecord(key=key, image_id=img.id,
                                 diff_ids=[lay.diff_id for lay in img.layers],
                                 created_at=_now_ns(), labels=labels)
            self.mounts(rec)  # refuse before creating anything if options would not fit
            path = self.snapshot_dir / key
            tmp = self.snapshot_dir / f".rm-{key}-{secrets.token_hex(4)}"
            tmp.mkdir(mode=0o711)
            (tmp / "fs").mkdir(mode=0o755)
            (tmp / "work").mkdir(mode=0o700)
            os.replace(tmp, path)
            try:
                self.state.put("snapshot", key, rec)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                raise
            self.snapshots[key] = rec
            log.info("snapshot prepared", key=key, image=img.id, layers=len(rec.diff_ids))
            return rec

    def get_snapshot(self, key: str) -> SnapshotRecord:
        rec = self.snapshots.get(key)
        if rec is None:
            raise NotFound(f"snapshot {key} not found")
        return rec

    def upperdir(self, key: str) -> Path:
        return self.snapshot_dir / key / "fs"

    def mounts(self, rec: SnapshotRecord) -> list[Mount]:
        base = self.snapshot_dir / rec.key
        lowers = []
        for diff_id in reversed(rec.diff_ids):
            layer = self.layer_records.get(diff_id)
            if layer is None:
                raise FailedPrecondition(f"snapshot {rec.key}: layer {diff_id} is missing")
            lowers.append(str(self.layers.link_path(layer.link)))
        if not lowers:
            empty = self.layers.links / "EMPTY"
            empty.mkdir(exist_ok=True)
            lowers.append(str(empty))
        options = [f"lowerdir={':'.join(dict.fromkeys(lowers))}", f"upperdir={base / 'fs'}",
                   f"workdir={base / 'work'}"]
        if self._index_off:
            options.append("index=off")
        if len(",".join(options)) >= MOUNT_OPTIONS_MAX:
            raise ResourceExhausted(
                f"image has {len(lowers)} layers: overlay options would exceed one page "
                f"({MOUNT_OPTIONS_MAX} bytes) with layer links in {self.layers.links}; "
                "set imaged.link_dir to a shorter directory")
        return [Mount(type="overlay", source="overlay", options=options)]

    async def remove_snapshot(self, key: str) -> bool:
        """Remove a snapshot; a missing one is success (False)."""
        async with self.lock:
            rec = self.snapshots.get(key)
            path = self.snapshot_dir / key
            if rec is None and not path.exists():
                return False
            upper = f"upperdir={path / 'fs'}"
            with open("/proc/self/mounts") as fh:
                if any(upper in line for line in fh):
                    raise FailedPrecondition(f"snapshot {key} is still mounted; unmount first")
            doomed = self.snapshot_dir / f".rm-{key}-{secrets.token_hex(4)}"
            if path.exists():
                os.replace(path, doomed)
            self.state.delete("snapshot", key)
            self.snapshots.pop(key, None)
            await asyncio.to_thread(shutil.rmtree, doomed, True)
            log.info("snapshot removed", key=key)
            # Layers kept only for this snapshot (its image was removed) go now.
            await self._collect()
            return True

    async def snapshot_usage(self, key: str) -> tuple[int, int]:
        self.get_snapshot(key)
        used, inodes = await asyncio.to_thread(disk_usage, self.snapshot_dir / key / "fs")
        # The upper directory itself is not the container's data.
        root = os.lstat(self.snapshot_dir / key / "fs")
        return used - root.st_blocks * 512, inodes - 1

    # ---------------------------------------------------------------- usage
    def container_usage(self) -> tuple[int, int]:
        """(bytes, inodes) the containers' writable layers use: every snapshot's upper
        directory, the directory itself not counted (blocking: thread it)."""
        used, inodes = 0, 0
        for key in list(self.snapshots):
            upper = self.upperdir(key)
            try:
                root = os.lstat(upper)
                u, i = disk_usage(upper)
            except FileNotFoundError:
                continue  # removed while we walked
            used += u - root.st_blocks * 512
            inodes += i - 1
        return used, inodes

    def usage(self) -> tuple[int, int]:
        """(bytes, inodes) the image store uses: blobs plus unpacked layers."""
        used, inodes = self.content.usage()
        for rec in self.layer_records.values():
            used += rec.bytes
            inodes += rec.inodes
        return used, inodes
