"""REST for runtimed: writable overlay snapshots of images (imaged never mounts them)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from crib_common.models.imaged import Snapshot, SnapshotCreate, SnapshotUsage
from crib_common.mountinfo import mountpoint_of
from crib_common.server import RouteTable, json_response, parse_body

from ..service import ImageService, snapshot_model


def register(routes: RouteTable, svc: ImageService) -> None:
    @routes.route("POST", "/v1/snapshots", "Prepare a writable snapshot of an image",
                  request=SnapshotCreate, response=Snapshot)
    async def create(request: web.Request) -> web.Response:
        body = await parse_body(request, SnapshotCreate)
        store = svc.store
        rec = await store.prepare_snapshot(body.key, body.image, body.labels)
        return json_response(snapshot_model(store, rec), status=201)

    @routes.route("GET", "/v1/snapshots", "List snapshots", response=Snapshot,
                  response_list=True)
    async def list_snapshots(_request: web.Request) -> web.Response:
        store = svc.store
        return json_response([snapshot_model(store, r) for r in store.snapshots.values()])

    @routes.route("GET", "/v1/snapshots/{key}", "One snapshot and its mounts",
                  response=Snapshot)
    async def get(request: web.Request) -> web.Response:
        store = svc.store
        return json_response(snapshot_model(store, store.get_snapshot(request.match_info["key"])))

    @routes.route("GET", "/v1/snapshots/{key}/usage", "Disk used by the writable layer",
                  response=SnapshotUsage)
    async def usage(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        used, inodes = await svc.store.snapshot_usage(key)
        mountpoint = await asyncio.to_thread(mountpoint_of, svc.store.snapshot_dir)
        return json_response(SnapshotUsage(key=key, bytes=used, inodes=inodes,
                                           mountpoint=mountpoint))

    @routes.route("DELETE", "/v1/snapshots/{key}", "Remove a snapshot (missing is success)")
    async def remove(request: web.Request) -> web.Response:
        await svc.store.remove_snapshot(request.match_info["key"])
        return web.Response(status=204)
