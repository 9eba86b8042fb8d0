"""CRI `ListImages`: every stored image, or those the filter's reference names."""

from __future__ import annotations

import structlog

from crib_common.cri.runtime.v1 import Image, ImageSpec, Int64Value, ListImagesRequest, \
    ListImagesResponse
from crib_common.server import CriTable

from ..service import ImageService, user_of
from ..store.images import ImageStore
from ..store.records import ImageRecord

log = structlog.get_logger("imaged.cri")


def register(table: CriTable, svc: ImageService) -> None:
    @table.unary("/runtime.v1.ImageService/ListImages", ListImagesRequest)
    async def list_images(request: ListImagesRequest) -> ListImagesResponse:
        wanted = request.filter.image.image if request.filter and request.filter.image else ""
        images = select_images(svc.store, wanted)
        log.debug("images listed", count=len(images), filter=wanted)
        return ListImagesResponse(images=[cri_image(img) for img in images])


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
