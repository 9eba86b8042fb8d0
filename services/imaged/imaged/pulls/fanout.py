"""Fan-out of pull updates to watchers, each behind a small coalescing buffer.

The publisher (the pull table's ticker, or a pull ending) never waits for a watcher: it
drops the update into each watcher's buffer and moves on. A buffer keeps one slot per
pull, so a newer update of a pull replaces the older one a slow watcher has not read yet
(intermediate updates are dropped, a pull's final one never is: nothing comes after it to
replace it). A watcher with more than `limit` pulls pending is closed as lagged instead of
growing: memory per watcher is bounded by `limit` slots whatever its client does. The
update itself (`Published`) is built once and shared by every watcher; its JSON line is
encoded once, on first use.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from crib_common.models.imaged import PullInfo, PullWatchEvent

__all__ = ["Fanout", "Published", "Watcher", "WATCHER_LIMIT"]

# Pulls a watcher may have pending before it is closed as lagged: far above the pulls a
# node runs at once (the kubelet pulls one image at a time unless told otherwise, at most
# maxParallelImagePulls), so only a client that stopped reading gets there.
WATCHER_LIMIT = 64


@dataclass(eq=False)
class Published:
    """One update as watchers receive it: a pull's state, or an idle/lagged marker."""

    type: str  # pull | idle | lagged
    info: PullInfo | None = None
    final: bool = False
    _line: bytes = b""

    @property
    def line(self) -> bytes:
        """The NDJSON line (`PullWatchEvent`), encoded once for every watcher."""
        if not self._line:
            event = PullWatchEvent(type=self.type, pull=self.info)  # type: ignore[arg-type]
            self._line = event.model_dump_json(exclude_none=False).encode() + b"\n"
        return self._line


IDLE = Published("idle")
LAGGED = Published("lagged")


@dataclass(eq=False)
class Watcher:
    """One client's view: updates of every pull (`pull_id` None) or of one."""

    pull_id: str | None
    limit: int = WATCHER_LIMIT
    closed: bool = False
    lagged: bool = False
    _pending: dict[str, Published] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, pull_id: str) -> bool:
        return self.pull_id is None or self.pull_id == pull_id

    def offer(self, key: str, update: Published) -> None:
        """Keep `update` as the latest of `key` (a pull id, or "" for markers)."""
        if self.closed:
            return
        if key and self._pending.get("") is IDLE:
            del self._pending[""]  # no longer idle: a pull came after
        old = self._pending.pop(key, None)
        if old is not None and old.final:
            self._pending[key] = old  # a final stays final (not expected: pulls end once)
            return
        if old is None and len(self._pending) >= self.limit:
            # Fell behind: end the stream rather than grow (the client may watch again).
            self.lagged = True
            self._pending.clear()
            self._pending[""] = LAGGED
            self.closed = True
            self._wake.set()
            return
        self._pending[key] = update
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    def pending(self) -> int:
        return len(self._pending)

    async def next(self) -> list[Published]:
        """What came since the last call, oldest first (waits for at least one); [] once
        the watcher is closed and drained."""
        while not self._pending:
            if self.closed:
                return []
            self._wake.clear()
            await self._wake.wait()
        batch = list(self._pending.values())
        self._pending.clear()
        return batch


@dataclass(eq=False)
class Fanout:
    """The watchers of one pull table."""

    watchers: set[Watcher] = field(default_factory=set)

    def add(self, watcher: Watcher) -> Watcher:
        self.watchers.add(watcher)
        return watcher

    def remove(self, watcher: Watcher) -> None:
        watcher.close()
        self.watchers.discard(watcher)

    def publish(self, pull_id: str, update: Published) -> None:
        """Hand `update` to every watcher of `pull_id`; never waits."""
        for watcher in self.watchers:
            if watcher.wants(pull_id):
                watcher.offer(pull_id, update)

    def publish_idle(self) -> None:
        for watcher in self.watchers:
            if watcher.pull_id is None:
                watcher.offer("", IDLE)
