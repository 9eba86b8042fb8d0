"""CRI `ListImages`: every stored image, or those the filter's reference names.

Replies are assembled from per-image encodings, kept until the image's tags, digests,
size or pin change (`image_entry`): building and encoding a betterproto `Image` per image
per call was most of the daemon's time on the kubelet's frequent ListImages and
ImageStatus calls.
"""

from __future__ import annotations

import structlog

from crib_common.cri.runtime.v1 import Image, ImageSpec, Int64Value, ListImagesRequest
from crib_common.server import CriTable
from crib_common.protowire import varint as _varint
from crib_common.wire import encode_message

from ..service import ImageService, user_of
from ..store.images import ImageStore
from ..store.records import ImageRecord

log = structlog.get_logger("imaged.cri")


def register(table: CriTable, svc: ImageService) -> None:
    @table.unary("/runtime.v1.ImageService/ListImages", ListImagesRequest)
    async def list_images(request: ListImagesRequest) -> bytes:
        wanted = request.filter.image.image if request.filter and request.filter.image else ""
        images = select_images(svc.store, wanted)
        log.debug("images listed", count=len(images), filter=wanted)
        # ListImagesResponse: `repeated Image images = 1`.
        return b"".join([image_entry(img) for img in images])


def select_images(store: ImageStore, wanted: str) -> list[ImageRecord]:
    """The image `wanted` names (ImageFilter.image), or every image, oldest first."""
    if wanted:
        found = store.find(wanted)
        return [found] if found is not None else []
    return sorted(store.images.values(), key=lambda i: i.created_at)


def cri_image(img: ImageRecord) -> Image:
    uid, username = user_of(img)
    # api.proto: size "Must be > 0"; uid and username are mutually exclusive.
    message = Image(
        id=img.id, repo_tags=list(img.repo_tags), repo_digests=list(img.repo_digests),
        size=max(img.size, 1), username=username, spec=ImageSpec(image=img.id),
        pinned=img.pinned,
    )
    if uid is not None:
        message.uid = Int64Value(uid)
    return message


_FIELD1 = b"\x0a"  # field 1, wire type 2: ListImagesResponse.images, ImageStatusResponse.image
# Per image id: (what the encoding depends on that can change, the framed encoding).
_ENTRIES: dict[str, tuple[tuple[object, ...], bytes]] = {}
# Removed images' entries are not tracked; past this many the cache starts over.
_MAX_ENTRIES = 4096


def image_entry(img: ImageRecord) -> bytes:
    """`cri_image(img)` encoded and framed as field 1, rebuilt only when it changed (the
    id, config and so the user are fixed for an image id)."""
    key = (tuple(img.repo_tags), tuple(img.repo_digests), img.size, img.pinned)
    hit = _ENTRIES.get(img.id)
    if hit is not None and hit[0] == key:
        return hit[1]
    data = encode_message(cri_image(img))
    if len(_ENTRIES) >= _MAX_ENTRIES:
        _ENTRIES.clear()
    entry = _ENTRIES[img.id] = (key, _FIELD1 + _varint(len(data)) + data)
    return entry[1]
