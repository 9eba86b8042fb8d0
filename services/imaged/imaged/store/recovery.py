"""Recovery of the image store at start, before imaged is ready (blocking: thread it).

Assumptions (what may change while imaged is down): only imaged writes under its root,
and imaged may have been killed at any instant; an operator may also have deleted files
by hand. So:

    ingest       partial downloads go, except resumable ones with a matching record
    layers       half unpacked (.tmp-) and half removed (.rm-) dirs go; a record whose
                 dir is gone goes; a dir without a record goes; dangling links go
    images       repaired rather than discarded:
                   every layer unpacked, some blobs absent -> kept, the absent blobs
                       marked in `ImageRecord.missing` (the next pull, or the repair
                       imaged starts once ready, fetches them again)
                   an unpacked layer gone                  -> dropped, and the drop kept
                       as a "dropped" record that `GET /v1/recovery` and `crib status`
                       report (a log line alone is how images went missing unnoticed,
                       issue 11)
                 a tag names one image: the newest keeps it
    snapshots    a record whose dir is gone goes; a dir without a record goes
    garbage      collected last, with every record loaded
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import time
from typing import TYPE_CHECKING

import structlog

from .records import DroppedImage, ImageRecord, LayerRecord, SnapshotRecord

if TYPE_CHECKING:
    from .images import ImageStore

__all__ = ["recover", "MISSING_AT_RECOVERY"]

log = structlog.get_logger("imaged.store")

MISSING_AT_RECOVERY = "not on disk at recovery; fetched again by the next pull"


def recover(store: ImageStore) -> dict[str, int]:
    """Reconcile records with the disk (see module docstring); the counts of what it did."""
    report = collections.Counter[str]()
    report["ingest_swept"], report["ingest_kept"] = store.content.sweep_ingest()
    report["layer_dirs_swept"] = len(store.layers.sweep())
    for entry in store.snapshot_dir.iterdir():
        if entry.name.startswith(".rm-"):
            shutil.rmtree(entry, ignore_errors=True)
            report["snapshot_dirs_swept"] += 1
    _recover_layers(store, report)
    for dropped in store.state.list("dropped", DroppedImage):
        store.dropped[dropped.id] = dropped
    for img in store.state.list("image", ImageRecord):
        _recover_image(store, img, report)
    _unique_tags(store, report)
    for snap in store.state.list("snapshot", SnapshotRecord):
        if not (store.snapshot_dir / snap.key).is_dir():
            store.state.delete("snapshot", snap.key)
            report["snapshots_dropped"] += 1
            continue
        store.snapshots[snap.key] = snap
    for entry in store.snapshot_dir.iterdir():
        if entry.name not in store.snapshots and not entry.name.startswith("."):
            shutil.rmtree(entry, ignore_errors=True)
            report["snapshot_dirs_orphaned"] += 1
    blobs, layers = store.collect_sync()
    report["blobs_collected"], report["layers_collected"] = blobs, layers
    return dict(report)


def _recover_layers(store: ImageStore, report: collections.Counter[str]) -> None:
    for rec in store.state.list("layer", LayerRecord):
        if not store.layers.exists(rec.diff_id):
            store.state.delete("layer", rec.diff_id)
            log.warning("layer record without its directory", diff_id=rec.diff_id)
            report["layer_records_dropped"] += 1
            continue
        link = store.layers.link_path(rec.link)
        if not os.path.lexists(link):
            link.symlink_to(store.layers.link_target(rec.diff_id))
        store.layer_records[rec.diff_id] = rec
    for diff_id in store.layers.on_disk() - set(store.layer_records):
        shutil.rmtree(store.layers.path(diff_id), ignore_errors=True)
        report["layer_dirs_orphaned"] += 1
    keep_links = {r.link for r in store.layer_records.values()}
    for name in store.layers.dangling_links(keep_links):
        with contextlib.suppress(FileNotFoundError):
            store.layers.link_path(name).unlink()


def _recover_image(store: ImageStore, img: ImageRecord,
                   report: collections.Counter[str]) -> None:
    lost_layers = [lay.diff_id for lay in img.layers if lay.diff_id not in store.layer_records]
    absent = [d for d in img.content if not store.content.has(d)]
    if lost_layers:
        # Nothing to run it from: a container needs every unpacked layer. Dropped, and
        # the drop kept where the operator looks.
        dropped = DroppedImage(
            id=img.id, repo_tags=img.repo_tags, repo_digests=img.repo_digests,
            reason=f"{len(lost_layers)} unpacked layer(s) not on disk; pull it again",
            missing=lost_layers + absent, dropped_at=time.time_ns())
        with store.state.transaction():
            store.state.delete("image", img.id)
            store.state.put("dropped", img.id, dropped)
        store.dropped[img.id] = dropped
        log.error("image dropped at recovery", image=img.id, tags=img.repo_tags,
                  missing=dropped.missing[:3])
        report["images_dropped"] += 1
        return
    # Every layer is unpacked: the image runs as it is. What is absent is marked (the
    # reason a blob already had stays), and fetched again on demand.
    missing = {d: img.missing.get(d, MISSING_AT_RECOVERY) for d in absent}
    if missing != img.missing:
        newly = sorted(set(missing) - set(img.missing))
        img = img.model_copy(update={"missing": missing})
        store.state.put("image", img.id, img)
        if newly:
            log.warning("image kept with blobs missing", image=img.id, tags=img.repo_tags,
                        missing=newly[:3])
            report["images_repaired"] += 1
            report["blobs_marked_missing"] += len(newly)
    if img.id in store.dropped:
        # Pulled again since it was dropped: the report has been answered.
        store.state.delete("dropped", img.id)
        del store.dropped[img.id]
    store.images[img.id] = img


def _unique_tags(store: ImageStore, report: collections.Counter[str]) -> None:
    """A tag names one image: keep it on the newest."""
    owner: dict[str, ImageRecord] = {}
    for img in sorted(store.images.values(), key=lambda i: i.created_at, reverse=True):
        kept = [t for t in img.repo_tags if t not in owner]
        for t in kept:
            owner[t] = img
        if kept != img.repo_tags:
            img.repo_tags = kept
            store.state.put("image", img.id, img)
            report["tags_fixed"] += 1
