"""CRI `StreamImages`: ListImages as a server stream of pages (api.proto: "streams results
in lists of at least one item ... Each item must appear in exactly one response"; the
kubelet uses it behind the CRIListStreaming feature gate, KEP 5825, to stay under the
gRPC message size limit on nodes with many images).

The images are chosen when the call arrives, so a tag moved or an image pulled while the
stream is read neither repeats nor drops an item; no images means no message, then EOF.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog

from crib_common.cri.runtime.v1 import StreamImagesRequest, StreamImagesResponse
from crib_common.server import CriTable

from ..service import ImageService
from ..store.records import ImageRecord
from .image_list import cri_image, select_images

log = structlog.get_logger("imaged.cri")

# Images per message: an Image is a few hundred bytes (ID, tags, digests), so 500 stay
# far below the kubelet's 16 MiB gRPC receive limit even with many tags each.
PAGE_SIZE = 500


def register(table: CriTable, svc: ImageService) -> None:
    @table.stream("/runtime.v1.ImageService/StreamImages", StreamImagesRequest)
    def stream_images(request: StreamImagesRequest) -> AsyncIterator[StreamImagesResponse]:
        # Not a generator itself: a bad filter or a store still loading fails the call
        # before the stream starts, with its own status.
        wanted = request.filter.image.image if request.filter and request.filter.image else ""
        images = select_images(svc.store, wanted)
        log.debug("images streamed", count=len(images), filter=wanted)
        return _pages(images, PAGE_SIZE)


async def _pages(images: list[ImageRecord], size: int) -> AsyncIterator[StreamImagesResponse]:
    for start in range(0, len(images), size):
        yield StreamImagesResponse(images=[cri_image(img) for img in images[start:start + size]])
