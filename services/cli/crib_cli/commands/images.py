"""`crib images`, `crib pull IMAGE`, `crib rmi IMAGE...`, `crib images prune|fs|recovery`:
imaged's operator API over its UNIX socket. `crib pull` draws the bars `crib pulls
--watch` draws (a row of imaged's pull table), or plain lines off a terminal."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import os
import sys
from typing import Any

from rich.live import Live

from crib_common.clients.imaged import ImagedClient
from crib_common.models.imaged import PullEvent, PullLayer, PullRequest, RecoveryReport
from crib_common.settings import CribSettings

from .. import render


def register(sub: Any) -> None:
    p = sub.add_parser("images", help="list images (or: images prune | fs | recovery)")
    p.add_argument("action", nargs="?", choices=["list", "prune", "fs", "recovery"],
                   default="list")
    p.add_argument("--clear", action="store_true",
                   help="recovery: forget the dropped images once seen")
    p.add_argument("-q", "--quiet", action="store_true", help="IDs only")
    p.add_argument("--all", action="store_true", help="prune: also tagged unused images")
    p.add_argument("--no-trunc", action="store_true", help="full image IDs")
    p.set_defaults(func=images)
    p = sub.add_parser("pull", help="pull an image with per-layer progress")
    p.add_argument("image")
    p.add_argument("--user", "-u", default="", help="registry user (password from "
                   "CRIB_REGISTRY_PASSWORD or a prompt)")
    p.add_argument("--quiet", "-q", action="store_true")
    p.set_defaults(func=pull)
    p = sub.add_parser("rmi", help="remove images (a tag only untags while others remain)")
    p.add_argument("images", nargs="+")
    p.add_argument("--all-names", "-a", action="store_true",
                   help="remove the image with every name, as CRI RemoveImage does")
    p.set_defaults(func=rmi)


def _client(settings: CribSettings) -> ImagedClient:
    return ImagedClient(settings.imaged.socket)


_size = render.size


async def images(args: argparse.Namespace, settings: CribSettings) -> int:
    async with _client(settings) as client:
        if args.action == "prune":
            result = await client.prune(all_images=args.all)
            for image_id in result.images:
                print(f"deleted {image_id}")
            print(f"freed {result.blobs} blobs, {result.layers} layers")
            return 0
        if args.action == "fs":
            fs = await client.image_fs()
            print(f"{fs.mountpoint}: {_size(fs.used_bytes)}, {fs.inodes_used} inodes, "
                  f"{fs.images} images, {fs.layers} layers, {fs.blobs} blobs")
            return 0
        if args.action == "recovery":
            report = await (client.clear_dropped() if args.clear else client.recovery())
            lines = recovery_lines(report)
            print("\n".join(lines) if lines else "imaged recovery: nothing dropped, "
                  "nothing missing")
            print("counts at the last start: " + (", ".join(
                f"{k} {v}" for k, v in sorted(report.counts.items()) if v) or "nothing to do"))
            return 0
        listed = await client.list_images()
    if args.quiet:
        for img in listed:
            print(img.id)
        return 0
    rows: list[tuple[str, ...]] = []
    for img in listed:
        image_id = img.id if args.no_trunc else img.id.removeprefix("sha256:")[:13]
        when = dt.datetime.fromtimestamp(img.created_at / 1e9).strftime("%Y-%m-%d %H:%M")
        names = [t.rsplit(":", 1) for t in img.repo_tags] or [
            [d.split("@", 1)[0], "<none>"] for d in img.repo_digests[:1]] or [["<none>",
                                                                                "<none>"]]
        for repo, tag in names:
            rows.append((repo, tag, image_id, _size(img.size), when))
    render.table(("IMAGE", "TAG", "IMAGE ID", "SIZE", "PULLED"), rows)
    return 0


async def pull(args: argparse.Namespace, settings: CribSettings) -> int:
    password = ""
    if args.user:
        password = os.environ.get("CRIB_REGISTRY_PASSWORD") or getpass.getpass("Password: ")
    request = PullRequest(reference=args.image, username=args.user, password=password,
                          requester="cli")
    tty = render.is_terminal() and not args.quiet
    last: PullEvent | None = None
    async with _client(settings) as client:
        if tty:
            with Live(render.pulls_view([]), console=render.console(), auto_refresh=False,
                      transient=False) as live:
                async for event in client.pull(request):
                    last = event
                    if event.pull is not None:
                        live.update(render.pulls_view([event.pull]), refresh=True)
        else:
            async for event in client.pull(request):
                last = event
    if last is None:
        print("crib: imaged closed the pull stream", file=sys.stderr)
        return 1
    if last.status == "error":
        print(f"crib: pull {args.image}: {last.error_kind}: {last.error}", file=sys.stderr)
        return 1
    if not tty and not args.quiet:
        for lp in last.layers:
            print(render.layer_line(PullLayer(digest=lp.digest, size=lp.size,
                                              done=lp.downloaded, state=lp.status)))
    print(last.image_id if args.quiet else f"pulled {last.reference} ({last.image_id})")
    return 0


async def rmi(args: argparse.Namespace, settings: CribSettings) -> int:
    code = 0
    async with _client(settings) as client:
        for ref in args.images:
            result = await client.remove_image(ref, all_names=args.all_names)
            if not result.removed:
                print(f"crib: no such image {ref}", file=sys.stderr)
                code = 1
            for name in result.removed:
                print(f"untagged/deleted {name}")
    return code


def recovery_lines(report: RecoveryReport) -> list[str]:
    """What `crib status` and `crib images recovery` say about imaged's recovery: the
    images it dropped and the images it kept with blobs missing."""
    lines = []
    if report.dropped:
        lines.append(f"imaged: {len(report.dropped)} image(s) dropped at recovery "
                     "(pull again; `crib images recovery --clear` forgets them):")
        for d in report.dropped:
            when = dt.datetime.fromtimestamp(d.dropped_at / 1e9).strftime("%Y-%m-%d %H:%M")
            names = ", ".join(d.repo_tags or d.repo_digests) or "<none>"
            lines.append(f"  {d.id} ({names}) at {when}: {d.reason}")
    if report.incomplete:
        lines.append(f"imaged: {len(report.incomplete)} image(s) kept with blobs missing "
                     "(fetched again by the next pull):")
        for img in report.incomplete:
            names = ", ".join(img.repo_tags or img.repo_digests) or "<none>"
            lines.append(f"  {img.id} ({names}): {len(img.missing)} blob(s) missing")
    return lines
