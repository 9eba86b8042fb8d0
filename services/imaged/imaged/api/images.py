"""Operator REST for images: list, resolve/inspect, pull (NDJSON progress), remove, prune,
filesystem usage."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiohttp import web

from crib_common.errors import CribError, InvalidArgument
from crib_common.models.imaged import (
    ImageFsUsage,
    ImageInfo,
    PruneResult,
    PullEvent,
    PullRequest,
    RemoveResult,
)
from crib_common.server import RouteTable, json_response, parse_body

from ..pull import PullProgress
from ..registry.auth import Credentials
from ..service import ImageService, image_info

# How often a pull stream reports while bytes flow.
PROGRESS_INTERVAL = 0.2


def register(routes: RouteTable, svc: ImageService) -> None:
    @routes.route("GET", "/v1/images", "List stored images", response=ImageInfo,
                  response_list=True)
    async def list_images(_request: web.Request) -> web.Response:
        store = svc.store
        images = sorted(store.images.values(), key=lambda i: i.created_at)
        return json_response([image_info(img) for img in images])

    @routes.route("GET", "/v1/images/resolve", "The image a reference, ID or ID prefix names",
                  response=ImageInfo, query={"ref": "reference, ID or unique ID prefix"})
    async def resolve(request: web.Request) -> web.Response:
        ref = request.query.get("ref", "")
        return json_response(image_info(svc.store.resolve(ref)))

    @routes.route("POST", "/v1/images/pull", "Pull an image; streams progress as NDJSON",
                  request=PullRequest, response=PullEvent, streaming=True)
    async def pull(request: web.Request) -> web.StreamResponse:
        body = await parse_body(request, PullRequest)
        creds = Credentials.from_auth_config(body.username, body.password, body.auth,
                                             body.identity_token, body.registry_token)
        svc.store  # Unavailable until recovered
        progress = PullProgress(body.reference)
        task = asyncio.ensure_future(svc.puller.pull(body.reference, creds, progress))
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            while not task.done():
                progress.changed.clear()
                await response.write(progress.event().model_dump_json().encode() + b"\n")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PROGRESS_INTERVAL):
                        await asyncio.wait({task})
            final = progress.event()
            try:
                img = task.result()
                final.status, final.image_id = "done", img.id
            except CribError as exc:
                final.status, final.error_kind, final.error = "error", exc.kind, exc.message
            except Exception as exc:  # reported in the stream: headers are already sent
                final.status, final.error_kind, final.error = "error", "internal", str(exc)
            await response.write(final.model_dump_json().encode() + b"\n")
        finally:
            if not task.done():
                task.cancel()
        await response.write_eof()
        return response

    @routes.route("DELETE", "/v1/images", "Remove an image (a tag only untags while others "
                  "remain, unless all=1)", response=RemoveResult,
                  query={"ref": "reference, ID or digest", "all": "1: every name"})
    async def remove(request: web.Request) -> web.Response:
        ref = request.query.get("ref", "")
        if not ref:
            raise InvalidArgument("ref is required")
        everything = request.query.get("all", "") in ("1", "true", "yes")
        removed = await svc.store.remove_image(ref, untag_only=not everything)
        return json_response(RemoveResult(removed=removed))

    @routes.route("POST", "/v1/images/prune", "Remove untagged images no snapshot uses "
                  "(all=1: every image no snapshot uses), then collect garbage",
                  response=PruneResult, query={"all": "1: also tagged images"})
    async def prune(request: web.Request) -> web.Response:
        store = svc.store
        everything = request.query.get("all", "") in ("1", "true", "yes")
        used = {s.image_id for s in store.snapshots.values()}
        doomed = [i.id for i in list(store.images.values())
                  if i.id not in used and (everything or not i.repo_tags) and not i.pinned]
        for image_id in doomed:
            await store.remove_image(image_id, collect=False)
        blobs, layers = await store.collect()
        return json_response(PruneResult(images=doomed, blobs=blobs, layers=layers))

    @routes.route("GET", "/v1/imagefs", "Bytes and inodes the image store uses",
                  response=ImageFsUsage)
    async def imagefs(_request: web.Request) -> web.Response:
        store = svc.store
        used, inodes = await asyncio.to_thread(store.usage)
        return json_response(ImageFsUsage(
            mountpoint=str(store.root), used_bytes=used, inodes_used=inodes,
            timestamp=time.time_ns(), images=len(store.images),
            layers=len(store.layer_records), blobs=len(store.content.digests())))
