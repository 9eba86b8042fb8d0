"""Creates that outlive their caller's deadline (CRI-O's resourcestore).

The kubelet gives RunPodSandbox and CreateContainer a deadline and retries with the same
name when it passes. The work goes on regardless; the retry collects its result instead
of making a twin or getting AlreadyExists. A failed create is forgotten at once; a
finished one is kept for the retry for PARK_TTL seconds.

    (name free) ──call──> running ──done──> parked (PARK_TTL) ──retry or TTL──> (free)
                              └──failed──> (free)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

__all__ = ["PARK_TTL", "Parking"]

log = structlog.get_logger("crib.runtimed")

# How long a create finished after its caller's deadline waits for the kubelet's retry.
PARK_TTL = 300.0


class Parking:
    def __init__(self) -> None:
        self._parked: dict[str, asyncio.Future[str]] = {}
        # The TTL of each create that finished while parked; cancelled when its caller
        # (or a retry) collects it, so a collected create is not held for PARK_TTL.
        self._expiry: dict[str, asyncio.TimerHandle] = {}

    async def run(self, name: str, make: Callable[[], Awaitable[str]]) -> str:
        """`make()` shielded from the caller's cancellation, shared by every call with the
        same `name` until it is collected."""
        task = self._parked.get(name)
        if task is None:
            task = asyncio.ensure_future(make())
            self._parked[name] = task

            def finished(t: asyncio.Future[str]) -> None:
                if self._parked.get(name) is not t:
                    return
                if t.cancelled() or t.exception() is not None:
                    del self._parked[name]
                else:
                    self._expiry[name] = asyncio.get_running_loop().call_later(
                        PARK_TTL, self._forget, name, t)

            task.add_done_callback(finished)
        else:
            log.info("collecting parked create", name=name)
        result = await asyncio.shield(task)
        self._forget(name, task)
        return result

    def _forget(self, name: str, task: asyncio.Future[str]) -> None:
        """Drop `name`'s create, if it is still `task`'s, and its TTL."""
        if self._parked.get(name) is not task:
            return
        del self._parked[name]
        expiry = self._expiry.pop(name, None)
        if expiry is not None:
            expiry.cancel()

    def __len__(self) -> int:
        return len(self._parked)
