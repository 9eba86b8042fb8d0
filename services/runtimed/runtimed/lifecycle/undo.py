"""Undo and teardown steps shared by the sandbox and container lifecycles.

A create pushes one undo (the whole teardown) on an `AsyncExitStack` and keeps it only
on success; the undo runs shielded under its own bound, never the caller's (maybe
expired) deadline (containerd's DeferContext, CRI-O's resourcecleaner). A teardown is
best effort step by step: a failed step (a peer down) does not stop the local ones, and
what it left is the orphan sweep's (`lifecycle.sweep`) once nothing names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import structlog

from crib_common.errors import CribError

from ..node import Node

__all__ = ["MONITOR_WAIT", "UNDO_TIMEOUT", "attempt", "release_monitor", "rollback",
           "run_undo", "undone_on_failure", "unmount_and_remove"]

log = structlog.get_logger("crib.runtimed")

# Undo steps run under their own bound, never the caller's (maybe expired) deadline.
UNDO_TIMEOUT = 60.0
# How long a teardown waits for a killed monitor to be gone before it removes the
# monitor's cgroup (a cgroup with a task in it cannot be removed).
MONITOR_WAIT = 10.0


async def run_undo(node: Node, fn: Callable[..., Awaitable[None]], rec: Any) -> None:
    """Run one undo step (a teardown of `rec`) shielded from cancellation, under
    UNDO_TIMEOUT. What it could not undo is the sweep's, once the record is dropped."""
    async def guarded() -> None:
        try:
            async with asyncio.timeout(UNDO_TIMEOUT):
                await fn(rec)
        except CribError as exc:
            # A peer (netd, imaged) down: the record goes with the failed create, and
            # the sweep removes what the step left there once the peer is back.
            log.warning("undo step failed; the sweep finishes it", step=fn.__name__,
                        error=exc.message)
            node.want_sweep(after=rec.meta.id)
        except Exception:
            log.exception("undo step failed", step=fn.__name__)
            node.want_sweep(after=rec.meta.id)

    await asyncio.shield(asyncio.ensure_future(guarded()))


@contextlib.asynccontextmanager
async def undone_on_failure(node: Node, rec: Any,
                            teardown: Callable[[Any], Awaitable[None]],
                            drop: Callable[[str], None]) -> AsyncIterator[None]:
    """The body of a create whose "creating" record `rec` is stored: if it fails (or is
    cancelled), `teardown(rec)` runs as an undo step and the record is dropped; the
    error goes on to the caller."""
    try:
        async with AsyncExitStack() as undo:
            undo.push_async_callback(run_undo, node, teardown, rec)
            yield
            undo.pop_all()
    except BaseException:
        with contextlib.suppress(Exception):
            drop(rec.meta.id)
        raise


async def rollback(node: Node, teardown: Callable[[Any], Awaitable[None]], rec: Any) -> None:
    """Tear down a half-done create found at start. Its record goes either way: what a
    peer that is not up yet still holds, or a directory that would not unmount, is left
    to the sweep, which finds it once nothing names it."""
    try:
        await teardown(rec)
    except Exception as exc:  # noqa: BLE001 - the sweep takes over
        log.warning("rollback incomplete; the sweep finishes it", id=rec.meta.id,
                    error=str(exc))
        node.want_sweep(after=rec.meta.id)


async def attempt(failed: list[Exception], step: str, work: Awaitable[Any],
                  **where: str) -> None:
    """Await one teardown step; a failure is logged and kept in `failed`, not raised."""
    try:
        await work
    except (CribError, OSError) as exc:
        failed.append(exc)
        log.warning("teardown step failed", step=step, error=str(exc), **where)


async def unmount_and_remove(node: Node, failed: list[Exception], path: str,
                             snapshots: list[str], first: Callable[[], None] | None = None,
                             **where: str) -> None:
    """Unmount everything under `path` (after `first`), then remove the snapshots and
    the directory. Only once nothing is mounted: taking a mounted overlay's upper
    directory would pull it from under the kernel, so after a failed unmount both wait
    for the next try. Failures go to `failed`, as with `attempt`."""
    try:
        if first is not None:
            first()
        node.host.unmount_under(path)
    except OSError as exc:
        failed.append(exc)
        log.warning("teardown step failed", step="unmount", error=str(exc), **where)
        return
    for key in snapshots:
        if key:
            await attempt(failed, "remove snapshot", node.imaged.remove_snapshot(key), **where)
    shutil.rmtree(path, ignore_errors=True)


async def release_monitor(node: Node, pid: int, started: int, cgroup: str,
                          owner: str) -> None:
    """End a container's (or infra's) monitor if it still runs, then remove the cgroup
    crib made for it. Whatever is still in that cgroup is killed first: a monitor whose
    pid was never recorded (runtimed died while it was held on its start pipe, which then
    let it go) is the only thing that can be, the container being in a cgroup of its own.
    A cgroup that stays (a task still leaving) is the sweep's, which removes empty monitor
    cgroups nobody owns (`lifecycle.sweep`)."""
    node.monitor.kill(pid)
    if pid > 0 and node.monitor.alive(pid, started):
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(MONITOR_WAIT):
                await node.monitor.wait(pid)
    if not cgroup:
        return

    def kill_and_remove() -> list[str]:
        node.host.kill_cgroup(cgroup)
        return node.host.remove_cgroup(cgroup)

    left = await asyncio.to_thread(kill_and_remove)
    if left:
        log.warning("monitor cgroup left behind", id=owner, cgroups=left)
        node.want_sweep(after=owner)
