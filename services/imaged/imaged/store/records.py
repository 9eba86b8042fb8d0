"""Records imaged persists in its StateStore (`<root>/state.db`).

    kind "image"     key image ID (config digest)   ImageRecord
    kind "layer"     key diff_id                    LayerRecord
    kind "snapshot"  key snapshot key               SnapshotRecord
    kind "dropped"   key image ID                   DroppedImage

The invariant, at every step: an image record exists only when every blob it names
(`content`) is on disk, except the ones its `missing` names, each with the reason. A pull
writes the record only after every blob it names is committed (a layer found unpacked
whose compressed blob is gone is fetched again) and every layer it needs is unpacked and
recorded, and `ImageStore.commit_image` checks the disk under the store lock before it
writes. A layer record is written only after its directory was renamed into place.

What may change while imaged is down: nothing but crashes of imaged itself (and an
operator deleting files by hand). Recovery (`store/recovery.py`) repairs rather than
discards: an image whose unpacked layers are all present is kept and its absent blobs are
marked in `missing` (fetched again by the next pull, or by the repair imaged starts after
recovery); only an image whose unpacked layer is gone is dropped, and each drop is kept
as a "dropped" record that `GET /v1/recovery` and `crib status` report until an operator
clears it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from crib_common.state import Record

__all__ = ["DroppedImage", "ImageLayer", "ImageRecord", "LayerRecord", "SnapshotRecord"]


class ImageLayer(Record):
    diff_id: str
    digest: str  # the (compressed) blob digest
    size: int
    media_type: str


class ImageRecord(Record):
    id: str
    repo_tags: list[str] = Field(default_factory=list)
    repo_digests: list[str] = Field(default_factory=list)
    manifest_digest: str
    # Every blob this image keeps alive: index(es), manifest, config, layers.
    content: list[str] = Field(default_factory=list)
    layers: list[ImageLayer] = Field(default_factory=list)  # bottom first
    size: int = 0
    config: dict[str, Any] = Field(default_factory=dict)
    created_at: int = 0
    pinned: bool = False
    # Blob digest -> why it is not on disk (see the invariant above); empty when whole.
    missing: dict[str, str] = Field(default_factory=dict)


class LayerRecord(Record):
    diff_id: str
    link: str  # short name under <root>/l/
    bytes: int = 0
    inodes: int = 0
    created_at: int = 0


class SnapshotRecord(Record):
    key: str
    image_id: str
    diff_ids: list[str] = Field(default_factory=list)  # bottom first
    created_at: int = 0
    labels: dict[str, str] = Field(default_factory=dict)


class DroppedImage(Record):
    """An image recovery could not keep, reported until an operator clears it."""

    id: str
    repo_tags: list[str] = Field(default_factory=list)
    repo_digests: list[str] = Field(default_factory=list)
    reason: str
    missing: list[str] = Field(default_factory=list)  # blobs and layers not on disk
    dropped_at: int = 0  # unix nanoseconds
