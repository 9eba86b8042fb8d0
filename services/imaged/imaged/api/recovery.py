"""Operator REST for what recovery did: the counts of the last start, the images it
dropped (kept over restarts until cleared) and the images kept with blobs missing."""

from __future__ import annotations

from aiohttp import web

from crib_common.models.imaged import DroppedImage, RecoveryReport
from crib_common.server import RouteTable, json_response

from ..service import ImageService, image_info


def report(svc: ImageService) -> RecoveryReport:
    store = svc.store
    return RecoveryReport(
        counts=dict(svc.recovery),
        dropped=[DroppedImage.model_validate(d.model_dump())
                 for d in sorted(store.dropped.values(), key=lambda d: d.dropped_at)],
        incomplete=[image_info(img) for img in store.images.values() if img.missing])


def register(routes: RouteTable, svc: ImageService) -> None:
    @routes.route("GET", "/v1/recovery", "What recovery did at start, the images it dropped "
                  "and the images kept with blobs missing", response=RecoveryReport)
    async def get(_request: web.Request) -> web.Response:
        return json_response(report(svc))

    @routes.route("DELETE", "/v1/recovery/dropped", "Forget the dropped images (the "
                  "operator has seen them); answers the report after", response=RecoveryReport)
    async def clear(_request: web.Request) -> web.Response:
        svc.store.clear_dropped()
        return json_response(report(svc))
