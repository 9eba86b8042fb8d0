"""CRI `PullImage`: pull from a registry with the request's AuthConfig; answer the ID."""

from __future__ import annotations

import asyncio

import structlog

from crib_common.cri.runtime.v1 import PullImageRequest, PullImageResponse
from crib_common.errors import DeadlineExceeded, InvalidArgument
from crib_common.server import CriTable

from ..registry.auth import Credentials
from ..service import ImageService

log = structlog.get_logger("imaged.cri")


def register(table: CriTable, svc: ImageService) -> None:
    @table.unary("/runtime.v1.ImageService/PullImage", PullImageRequest)
    async def pull_image(request: PullImageRequest) -> PullImageResponse:
        ref = request.image.image if request.image else ""
        if not ref:
            raise InvalidArgument("PullImage needs image.image")
        auth = request.auth
        creds = Credentials.from_auth_config(
            auth.username, auth.password, auth.auth, auth.identity_token, auth.registry_token,
        ) if auth else Credentials()
        structlog.contextvars.bind_contextvars(image=ref)
        svc.store  # Unavailable until recovered
        try:
            async with asyncio.timeout(svc.settings.pull_timeout):
                img = await svc.puller.pull(ref, creds)
        except TimeoutError:
            raise DeadlineExceeded(f"pull of {ref} took longer than "
                                   f"{svc.settings.pull_timeout}s") from None
        # api.proto: image_ref MUST equal Image.id (the config digest here).
        return PullImageResponse(image_ref=img.id)
