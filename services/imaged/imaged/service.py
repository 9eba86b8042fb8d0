"""ImageService: what the CRI and REST handlers share (store, puller, settings)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from crib_common.errors import Unavailable
from crib_common.models.imaged import ImageInfo, Snapshot
from crib_common.settings import ImagedSection

from .pull import Puller
from .pulls import PullTable
from .store.images import ImageStore
from .store.records import ImageRecord, SnapshotRecord

__all__ = ["ImageService", "image_info", "snapshot_model", "user_of"]


@dataclass
class ImageService:
    settings: ImagedSection
    _store: ImageStore | None = None
    _puller: Puller | None = None
    recovery: dict[str, int] = field(default_factory=dict)
    # Every pull in flight; create_app gives it the metrics registry `/metrics` serves.
    pulls: PullTable = field(init=False)

    def __post_init__(self) -> None:
        self.pulls = PullTable(self.settings.image_pull_progress_timeout)

    @property
    def store(self) -> ImageStore:
        # Until recovery is done answer Unavailable (containerd `checkInitialized`).
        if self._store is None or not self._store.ready:
            raise Unavailable("imaged is still loading its image store")
        return self._store

    @property
    def puller(self) -> Puller:
        if self._puller is None:
            raise Unavailable("imaged is still loading its image store")
        return self._puller


def image_info(img: ImageRecord) -> ImageInfo:
    return ImageInfo(id=img.id, repo_tags=list(img.repo_tags),
                     repo_digests=list(img.repo_digests), size=img.size,
                     manifest_digest=img.manifest_digest, config=img.config,
                     pinned=img.pinned, created_at=img.created_at,
                     missing=dict(img.missing))


def snapshot_model(store: ImageStore, rec: SnapshotRecord) -> Snapshot:
    return Snapshot(key=rec.key, image_id=rec.image_id, mounts=store.mounts(rec),
                    upperdir=str(store.upperdir(rec.key)), created_at=rec.created_at,
                    labels=dict(rec.labels))


def user_of(img: ImageRecord) -> tuple[int | None, str]:
    """(uid, username) from the config's User ("1000", "1000:1000", "crib", "crib:grp"),
    as containerd's `getUserFromImage`: a numeric user is a uid, else a name."""
    user = str(img.config.get("config", {}).get("User", "") or "")
    if not user:
        return None, ""
    name = user.split(":", 1)[0]
    if name.isdigit():
        return int(name), ""
    return None, name


def verbose_info(img: ImageRecord) -> dict[str, str]:
    return {"info": json.dumps({
        "id": img.id,
        "manifestDigest": img.manifest_digest,
        "layers": [lay.model_dump() for lay in img.layers],
        "missing": img.missing,
        "imageSpec": img.config,
    })}
