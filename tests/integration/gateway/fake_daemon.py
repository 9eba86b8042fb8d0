"""A stand-in daemon for the gateway's edge cases, served by the production daemon code.

It answers three ImageService RPCs on whatever socket it is given (the tests point the
gateway's `imaged` socket at it):

- `ImageStatus`: sleeps when the image is `sleep:<seconds>` (a daemon slower than the
  kubelet's deadline) and reports the size it received in `info`;
- `ListImages`: with the filter image `big:<bytes>`, answers one image whose id is that
  long (an answer larger than grpcio's 4 MiB default);
- `PullImage`: pulls nothing, answers a fixed digest (its request carries enums deep in
  `sandbox_config`, for the unknown-enum case).

Everything else (HTTP edge middleware, CRI dispatch, deadline enforcement, logging) is
`crib_common.server`, as in the real daemons.

    python -m tests.integration.gateway.fake_daemon <socket>
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiohttp import web

from crib_common.cri.runtime.v1 import (
    Image,
    ImageStatusRequest,
    ImageStatusResponse,
    ListImagesRequest,
    ListImagesResponse,
    PullImageRequest,
    PullImageResponse,
)
from crib_common.logging import configure_logging
from crib_common.server import CriTable, Health, RouteTable, create_daemon_app, serve
from crib_common.settings import load_settings


def create_app() -> web.Application:
    """The fake imaged app."""
    cri = CriTable()

    @cri.unary("/runtime.v1.ImageService/ImageStatus", ImageStatusRequest)
    async def image_status(request: ImageStatusRequest) -> ImageStatusResponse:
        name = request.image.image
        if name.startswith("sleep:"):
            await asyncio.sleep(float(name.removeprefix("sleep:")))
        return ImageStatusResponse(info={"name_len": str(len(name))})

    @cri.unary("/runtime.v1.ImageService/ListImages", ListImagesRequest)
    async def list_images(request: ListImagesRequest) -> ListImagesResponse:
        name = request.filter.image.image
        if name.startswith("big:"):
            return ListImagesResponse(images=[Image(id="x" * int(name.removeprefix("big:")))])
        return ListImagesResponse()

    @cri.unary("/runtime.v1.ImageService/PullImage", PullImageRequest)
    async def pull_image(request: PullImageRequest) -> PullImageResponse:
        return PullImageResponse(image_ref="sha256:" + "0" * 64)

    async def health() -> Health:
        return Health(service="imaged")

    return create_daemon_app("imaged", RouteTable(), cri, health)


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log, "imaged")
    asyncio.run(serve(create_app(), Path(sys.argv[1])))


if __name__ == "__main__":
    main()
