"""CRI `ImageStatus`: one image, or an empty response when it is not present."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import ImageStatusRequest, ImageStatusResponse
from crib_common.errors import InvalidArgument
from crib_common.server import CriTable

from ..service import ImageService, verbose_info
from .image_list import cri_image, image_entry


def register(table: CriTable, svc: ImageService) -> None:
    @table.unary("/runtime.v1.ImageService/ImageStatus", ImageStatusRequest)
    async def image_status(request: ImageStatusRequest) -> ImageStatusResponse | bytes:
        ref = request.image.image if request.image else ""
        if not ref:
            raise InvalidArgument("ImageStatus needs image.image")
        img = svc.store.find(ref)
        # api.proto: "If the image is not present, returns a response with
        # ImageStatusResponse.Image set to nil."
        if img is None:
            return ImageStatusResponse()
        if not request.verbose:
            # ImageStatusResponse: `Image image = 1`, the same framed, cached encoding.
            return image_entry(img)
        return ImageStatusResponse(image=cri_image(img), info=verbose_info(img))
