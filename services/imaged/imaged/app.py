"""create_app(settings): imaged's routes, CRI methods and resources.

Resources (in `cleanup_ctx`, undone in reverse): the image store, recovered before the
socket serves; the outbound HTTP session for registries; the puller; the repair of images
recovery kept with blobs missing, in the background once ready. The pull table (every
pull in flight, its watchers and metrics) lives as long as the app.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web

from crib_common.server import CriTable, Health, RouteTable, create_daemon_app, metrics_registry
from crib_common.settings import CribSettings

from .api import images as images_api
from .api import pulls as pulls_api
from .api import recovery as recovery_api
from .api import snapshots as snapshots_api
from .cri import register_all
from .oci.reference import parse_reference
from .pull import Puller
from .pulls import PullMetrics, PullTable
from .service import ImageService
from .store.images import ImageStore

log = structlog.get_logger("imaged")

SERVICE_KEY = web.AppKey("imaged_service", ImageService)


def create_app(settings: CribSettings) -> web.Application:
    svc = ImageService(settings.imaged)
    cri = CriTable()
    routes = RouteTable()
    register_all(cri, svc)
    images_api.register(routes, svc)
    pulls_api.register(routes, svc)
    snapshots_api.register(routes, svc)
    recovery_api.register(routes, svc)

    async def health() -> Health:
        store = svc._store
        if store is None or not store.ready:
            return Health(service="imaged", ready=False, reason="Recovering",
                          message="loading the image store")
        # Still ready: dropped images are the operator's to see (GET /v1/recovery, `crib
        # status`), not a reason to stop serving the images that are there.
        return Health(service="imaged", details={
            "images": len(store.images), "layers": len(store.layer_records),
            "snapshots": len(store.snapshots), "recovery": svc.recovery,
            "images_dropped": sorted(store.dropped),
            "images_missing_blobs": sorted(i.id for i in store.images.values() if i.missing)})

    app = create_daemon_app("imaged", routes, cri, health)
    app[SERVICE_KEY] = svc
    svc.pulls = PullTable(settings.imaged.image_pull_progress_timeout,
                          PullMetrics(metrics_registry(app)))

    async def resources(_app: web.Application) -> AsyncIterator[None]:
        settings.imaged.run_dir.mkdir(parents=True, exist_ok=True)
        store = await asyncio.to_thread(ImageStore, settings.imaged.root,
                                        settings.imaged.link_dir)
        svc.recovery = await asyncio.to_thread(store.recover)
        log.info("image store loaded", images=len(store.images),
                 layers=len(store.layer_records), **svc.recovery)
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64),
            timeout=aiohttp.ClientTimeout(sock_connect=15, sock_read=120),
            auto_decompress=False,
        )
        if settings.runtimed.pause_image:
            # CRI Image.pinned: a recommendation to the kubelet's image GC (api.proto).
            store.pinned_names = {str(parse_reference(settings.runtimed.pause_image))}
        svc._puller = Puller(store, settings.imaged, http, svc.pulls)
        svc._store = store
        repair = asyncio.ensure_future(_repair_all(svc))
        try:
            yield
        finally:
            repair.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await repair
            svc._store = None
            await svc.pulls.close()
            await http.close()
            store.close()

    app.cleanup_ctx.append(resources)
    return app


async def _repair_all(svc: ImageService) -> None:
    """Fetch again, one image after another, the blobs recovery found missing. Best
    effort and anonymous: what fails stays marked until the next pull of the image."""
    # No total time limit: each pull fails when it stops moving (image_pull_progress_timeout).
    for image_id in [i.id for i in svc.store.images.values() if i.missing]:
        await svc.puller.repair(image_id)
