"""CRI `PullImage`: pull from a registry with the request's AuthConfig; answer the ID.

The pull is a row of imaged's pull table (`GET /v1/pulls`) for as long as it runs, with
the pod it is for when the kubelet sends `sandbox_config` (api.proto: "Config of the
PodSandbox, which is used to pull image in PodSandbox context"). It has no total time
limit: it fails when it stops moving (`image_pull_progress_timeout`) or at the caller's
deadline.
"""

from __future__ import annotations

import structlog

from crib_common.cri.runtime.v1 import PullImageRequest, PullImageResponse
from crib_common.errors import InvalidArgument
from crib_common.models.imaged import PullPod, PullRequester
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
        img = await svc.puller.pull(ref, creds, _requester(request))
        # api.proto: image_ref MUST equal Image.id (the config digest here).
        return PullImageResponse(image_ref=img.id)


def _requester(request: PullImageRequest) -> PullRequester:
    """A CRI pull, for the pod of `sandbox_config` when the kubelet sent one."""
    config = request.sandbox_config
    meta = config.metadata if config else None
    if not meta:
        return PullRequester(kind="cri")
    structlog.contextvars.bind_contextvars(pod=f"{meta.namespace}/{meta.name}")
    return PullRequester(kind="cri", pod=PullPod(name=meta.name, namespace=meta.namespace,
                                                 uid=meta.uid))
