"""CRI `RemoveImage` by ID, tag or digest; every name of the image goes with it."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import RemoveImageRequest, RemoveImageResponse
from crib_common.errors import InvalidArgument
from crib_common.server import CriTable

from ..service import ImageService


def register(table: CriTable, svc: ImageService) -> None:
    @table.unary("/runtime.v1.ImageService/RemoveImage", RemoveImageRequest)
    async def remove_image(request: RemoveImageRequest) -> RemoveImageResponse:
        ref = request.image.image if request.image else ""
        if not ref:
            raise InvalidArgument("RemoveImage needs image.image")
        # api.proto: "This call is idempotent, and must not return an error if the image
        # has already been removed." and "removing the image by a single tag will remove
        # all of its tags". A missing image therefore answers success.
        await svc.store.remove_image(ref, untag_only=False)
        return RemoveImageResponse()
