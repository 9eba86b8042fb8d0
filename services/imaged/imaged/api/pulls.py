"""Operator REST for the pull table: every pull in flight, whoever started it, and a
progress stream (NDJSON of `PullWatchEvent`, a few updates a second per pull, each pull
ending with its outcome).

A stream is fed by the table's fan-out through a bounded buffer (see `pulls.fanout`): a
client reading slowly gets fewer, newer updates; one that stops reading is dropped after
`WRITE_TIMEOUT`, and one that falls `WATCHER_LIMIT` pulls behind gets "lagged" and the
end of the stream. Either way imaged keeps nothing for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from aiohttp import web

from crib_common.models.imaged import PullInfo, PullWatchEvent
from crib_common.server import RouteTable, json_response

from ..pulls import Published, Watcher
from ..service import ImageService

__all__ = ["register", "stream_updates", "WRITE_TIMEOUT", "KEEPALIVE"]

log = structlog.get_logger("imaged.api")

# Seconds a write to a watcher may stay blocked (its client stopped reading) before the
# connection is dropped: aiohttp's buffer then holds at most what one write left there.
WRITE_TIMEOUT = 30.0
# Seconds of silence after which a stream sends an empty line: finds clients that went
# away while no pull was running (NDJSON readers skip empty lines).
KEEPALIVE = 15.0


def register(routes: RouteTable, svc: ImageService) -> None:
    # /v1/pulls/events before /v1/pulls/{id}: the router tries routes in order.
    @routes.route("GET", "/v1/pulls", "Pulls in flight, whoever started them (the "
                  "kubelet, crib pull, the REST API, a pause image)", response=PullInfo,
                  response_list=True, query={"recent": "1: also the recently finished"})
    async def list_pulls(request: web.Request) -> web.Response:
        recent = request.query.get("recent", "") in ("1", "true", "yes")
        return json_response(svc.pulls.infos(recent=recent))

    @routes.route("GET", "/v1/pulls/events", "Progress of every pull as NDJSON, a few "
                  "updates a second per pull, each pull ending with its outcome",
                  response=PullWatchEvent, streaming=True,
                  query={"until_idle": "1: end the stream once no pull is in flight"})
    async def watch_all(request: web.Request) -> web.StreamResponse:
        until_idle = request.query.get("until_idle", "") in ("1", "true", "yes")
        watcher = svc.pulls.watch(None)
        return await stream_updates(
            request, svc, watcher, lambda u: u.line,
            lambda u: u.type == "lagged" or (until_idle and u.type == "idle"))

    @routes.route("GET", "/v1/pulls/{id}", "One pull, in flight or recently finished",
                  response=PullInfo)
    async def get_pull(request: web.Request) -> web.Response:
        now = asyncio.get_running_loop().time()
        return json_response(svc.pulls.get(request.match_info["id"]).info(now))

    @routes.route("GET", "/v1/pulls/{id}/events", "Progress of one pull as NDJSON, ending "
                  "with its outcome", response=PullWatchEvent, streaming=True)
    async def watch_one(request: web.Request) -> web.StreamResponse:
        watcher = svc.pulls.watch(request.match_info["id"])
        return await stream_updates(request, svc, watcher, lambda u: u.line,
                                    lambda u: u.final or u.type == "lagged")


async def stream_updates(request: web.Request, svc: ImageService, watcher: Watcher,
                         encode: Callable[[Published], bytes],
                         last: Callable[[Published], bool]) -> web.StreamResponse:
    """Write what `watcher` gets as NDJSON (`encode` makes each line) until an update
    for which `last` is true, the client goes away or stops reading. Unwatches at the end."""
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    try:
        await response.prepare(request)
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE):
                    batch = await watcher.next()
            except TimeoutError:
                batch, data = None, b"\n"
            else:
                if not batch:
                    break
                data = b"".join(encode(u) for u in batch)
            try:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await response.write(data)
            except TimeoutError:
                log.warning("pull watcher dropped: its client stopped reading",
                            seconds=WRITE_TIMEOUT)
                if request.transport is not None:
                    request.transport.abort()
                break
            if batch and any(last(u) for u in batch):
                break
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away: nothing to keep for it
    finally:
        svc.pulls.unwatch(watcher)
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response
