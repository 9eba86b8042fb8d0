"""Records imaged persists in its StateStore (`<root>/state.db`).

    kind "image"     key image ID (config digest)   ImageRecord
    kind "layer"     key diff_id                    LayerRecord
    kind "snapshot"  key snapshot key               SnapshotRecord

An image record is written only after every blob it names is committed and every layer it
needs is unpacked and recorded, so a stored image is always complete. A layer record is
written only after its directory was renamed into place. What may change while imaged is
down: nothing but crashes of imaged itself; recovery (`ImageStore.recover`) reconciles
records with the directories and drops what does not match.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from crib_common.state import Record

__all__ = ["ImageLayer", "ImageRecord", "LayerRecord", "SnapshotRecord"]


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
