"""Operator REST for images: list, resolve/inspect, pull (NDJSON progress), remove, prune,
filesystem usage.

A pull started here is a row of the pull table like any other; its stream is a watcher of
that one row (throttled by the table's ticker), each line a `PullEvent` carrying the row.
The client going away cancels the pull (the CRI's callers retry; an operator asks again).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from crib_common.errors import InvalidArgument
from crib_common.models.imaged import (
    ImageFsUsage,
    ImageInfo,
    LayerProgress,
    PruneResult,
    PullEvent,
    PullInfo,
    PullRequest,
    PullRequester,
    RemoveResult,
)
from crib_common.server import RouteTable, json_response, parse_body

from ..pulls import Published
from ..registry.auth import Credentials
from ..service import ImageService, image_info
from .pulls import stream_updates


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
        puller = svc.puller
        requester = PullRequester(kind=body.requester, pod=body.pod)
        pull = svc.pulls.open(body.reference, requester)
        watcher = svc.pulls.watch(pull.id)
        task = asyncio.ensure_future(puller.pull(body.reference, creds, pull=pull))
        try:
            return await stream_updates(request, svc, watcher, _event_line,
                                        lambda u: u.final)
        finally:
            if not task.done():
                task.cancel()
            # The outcome went out in the final line; the task's error is not lost.
            task.add_done_callback(_retrieve)

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


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _event_line(update: Published) -> bytes:
    """A `PullEvent` line (the shape `POST /v1/images/pull` always streamed) of a row."""
    info = update.info
    if info is None:  # markers do not concern a one-pull stream
        return b""
    return pull_event(info).model_dump_json().encode() + b"\n"


def pull_event(info: PullInfo) -> PullEvent:
    status = {"done": "done", "failed": "error"}.get(info.state, info.state)
    layers = [LayerProgress(digest=lay.digest, size=lay.size, downloaded=lay.done,
                            status=lay.state) for lay in info.layers]
    return PullEvent(reference=info.reference, status=status, image_id=info.image_id,
                     layers=layers, error_kind=info.error_kind, error=info.error, pull=info)
