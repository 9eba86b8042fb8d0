"""`crib pulls`: imaged's table of pulls in flight, whoever started them; `crib pulls
--watch`: a live bar per pull and per layer, with the pod each is for, until the pulls
end (plain lines when stdout is not a terminal)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from rich.live import Live

from crib_common.clients.imaged import ImagedClient
from crib_common.errors import CribError
from crib_common.models.imaged import PullInfo
from crib_common.settings import CribSettings

from .. import render


def register(sub: Any) -> None:
    p = sub.add_parser("pulls", help="image pulls in flight (--watch: live progress)")
    p.add_argument("id", nargs="?", help="only this pull")
    p.add_argument("-w", "--watch", action="store_true",
                   help="live bars per pull and per layer until the pulls end")
    p.add_argument("--recent", action="store_true", help="also recently finished pulls")
    p.add_argument("-q", "--quiet", action="store_true", help="IDs only")
    p.set_defaults(func=pulls)


def _age(info: PullInfo) -> str:
    return render.eta(info.elapsed)


async def pulls(args: argparse.Namespace, settings: CribSettings) -> int:
    async with ImagedClient(settings.imaged.socket) as client:
        if args.watch:
            return await watch(client, args.id)
        infos = ([await client.get_pull(args.id)] if args.id
                 else await client.list_pulls(recent=args.recent))
    if args.quiet:
        for info in infos:
            print(info.id)
        return 0
    rows = [[info.id, info.reference, render.requester(info), info.state,
             f"{render.size(info.done)}/{render.size(info.size)}"
             + (f" {100 * info.done // info.size}%" if info.size else ""),
             render.rate(info.rate), render.eta(info.eta), _age(info)]
            for info in infos]
    render.table(["PULL ID", "IMAGE", "FOR", "STATE", "PROGRESS", "RATE", "ETA", "AGE"], rows)
    return 0


async def watch(client: ImagedClient, pull_id: str | None = None) -> int:
    """Follow every pull until none is in flight (or one pull until it ends); 1 if a pull
    failed or the stream broke off."""
    shown: dict[str, PullInfo] = {}
    lagged = False
    stream = client.watch_pulls(pull_id, until_idle=pull_id is None)
    if render.is_terminal():
        with Live(render.pulls_view([]), console=render.console(), auto_refresh=False,
                  transient=False) as live:
            async for event in stream:
                if event.type == "pull" and event.pull is not None:
                    shown[event.pull.id] = event.pull
                lagged = lagged or event.type == "lagged"
                live.update(render.pulls_view(list(shown.values())), refresh=True)
    else:
        printed: dict[str, tuple[str, float]] = {}
        async for event in stream:
            lagged = lagged or event.type == "lagged"
            info = event.pull
            if info is None:
                continue
            shown[info.id] = info
            # A line when a pull's state changes, else at most one a second per pull.
            state, when = printed.get(info.id, ("", 0.0))
            now = time.monotonic()
            if info.state != state or now - when >= 1.0:
                printed[info.id] = (info.state, now)
                print(render.pull_line(info), flush=True)
        if not shown:
            print("no pulls in flight")
    if lagged:
        print("crib: imaged dropped this watch (it fell behind); watch again",
              file=sys.stderr)
        return 1
    return 1 if any(info.state == "failed" for info in shown.values()) else 0


async def pulls_in_flight(settings: CribSettings) -> list[PullInfo]:
    """The pulls in flight, or none if imaged does not answer (for `crib pods`)."""
    try:
        async with ImagedClient(settings.imaged.socket) as client:
            return await client.list_pulls(timeout=3.0)
    except CribError:
        return []
