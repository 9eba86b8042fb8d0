"""imaged's table of pulls in flight, whoever started them, and its ticker.

The puller registers each pull (`open`), attaches its layers to shared transfers
(`attach`), and reports its end (`finish`). Between those, the download path only adds
to integers (see `records`). A ticker, running while any pull is in flight, does the
rest `TICK` seconds apart:

- rates: a (time, bytes) sample per pull;
- metrics: bytes each transfer gained, by registry;
- the no-progress timeout (containerd's `image_pull_progress_timeout`): a pull with a
  layer downloading and no byte arrived for that long is cancelled through its
  `asyncio.timeout` scope, and fails with DeadlineExceeded naming the layers and the stall;
  time spent waiting for a download slot or unpacking does not count;
- a progress log line every `LOG_EVERY` seconds of a long pull;
- publishing: each pull whose bytes or state changed goes once to the fan-out, which
  every watcher reads at its own pace (`fanout`). A pull's end is published at once.
  With many watchers, intermediate updates go out every few ticks instead, so the
  stream writes stay near `WRITE_BUDGET` a second however many clients watch: hundreds
  of watchers do not take the event loop from the downloads.

Finished pulls stay answerable by id (`GET /v1/pulls/{id}`) among the last `RECENT`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import time

import structlog

from crib_common.errors import CribError, DeadlineExceeded, NotFound
from crib_common.models.imaged import PullInfo, PullRequester

from .fanout import IDLE, Fanout, Published, Watcher
from .metrics import PullMetrics
from .records import LayerEntry, Pull, Transfer

__all__ = ["PullTable", "TICK", "LOG_EVERY", "RECENT"]

log = structlog.get_logger("imaged.pull")

# Seconds between ticks: what watchers see is at most this old ("a few updates a
# second"), and the stall check is this precise.
TICK = 0.25
# Seconds between progress lines of one long pull (journalctl tells the story).
LOG_EVERY = 30.0
# Finished pulls kept for `GET /v1/pulls/{id}` (a client asking right after the end).
RECENT = 64
# Stream writes a second the ticker aims to stay under: each costs the event loop some
# tens of microseconds (aiohttp), so this is ~1-2% of a core at most.
WRITE_BUDGET = 400


class PullTable:
    """Every pull in flight, its transfers, its watchers."""

    def __init__(self, progress_timeout: float, metrics: PullMetrics | None = None,
                 tick: float = TICK) -> None:
        self.progress_timeout = progress_timeout
        self.metrics = metrics or PullMetrics()
        self.tick_interval = tick
        self.pulls: dict[str, Pull] = {}
        self.recent: collections.OrderedDict[str, Pull] = collections.OrderedDict()
        self.transfers: dict[str, Transfer] = {}
        self.fanout = Fanout()
        self._ticker: asyncio.Task[None] | None = None
        self._ticks = 0

    # ------------------------------------------------------------ the puller's side
    def open(self, reference: str, requester: PullRequester) -> Pull:
        """Register a pull that is about to start."""
        loop = asyncio.get_running_loop()
        pull_id = os.urandom(6).hex()
        while pull_id in self.pulls or pull_id in self.recent:
            pull_id = os.urandom(6).hex()
        pull = Pull(id=pull_id, reference=reference, requester=requester,
                    started_at=time.time_ns(), started=loop.time())
        pull.logged = pull.started
        self.pulls[pull_id] = pull
        self.metrics.in_flight.set(len(self.pulls))
        self.metrics.started.labels(requester.kind).inc()
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.ensure_future(self._run())
        return pull

    def set_layers(self, pull: Pull, layers: list[tuple[str, int]]) -> None:
        """The manifest is read: the pull's layers, (digest, size) in order."""
        for digest, size in layers:
            pull.layers.setdefault(digest, LayerEntry(digest, size))
        pull.state = "pulling"
        pull.changed()

    def attach(self, pull: Pull, digest: str) -> Transfer:
        """The transfer of layer blob `digest` for `pull`: the one in flight if another pull
        started it (its bytes then count for both), else a new one."""
        entry = pull.layers[digest]
        tr = self.transfers.get(digest)
        if tr is None:
            tr = Transfer(digest, entry.size, pull.registry)
            self.transfers[digest] = tr
        if pull not in tr.owners:
            tr.owners.append(pull)
        entry.transfer = tr
        pull.changed()
        return tr

    def layer_present(self, pull: Pull, digest: str) -> None:
        """The layer is already unpacked here."""
        pull.layers[digest].state = "exists"
        self.metrics.present.inc()
        pull.changed()

    def layer_done(self, pull: Pull, digest: str) -> None:
        pull.layers[digest].state = "done"
        pull.changed()

    def finish(self, pull: Pull, image_id: str = "",
               error: BaseException | None = None) -> None:
        """The pull ended: publish its outcome, count it, keep it among the recent."""
        if pull.finished_at:
            return
        loop = asyncio.get_running_loop()
        pull.finished, pull.finished_at = loop.time(), time.time_ns()
        if error is None:
            pull.state, pull.image_id = "done", image_id
            for entry in pull.layers.values():
                if entry.state not in ("exists", "done"):
                    entry.state = "done"
            outcome = "done"
        else:
            pull.state, outcome = "failed", "failed"
            pull.error_kind, pull.error, reason = _describe(error, pull)
            self.metrics.failures.labels(reason).inc()
        pull.changed()
        info = pull.info(pull.finished)
        for entry in pull.layers.values():
            tr = entry.transfer
            if tr is None:
                continue
            self._flush(tr)
            with contextlib.suppress(ValueError):
                tr.owners.remove(pull)
            if not tr.owners and self.transfers.get(tr.digest) is tr:
                del self.transfers[tr.digest]
        self.pulls.pop(pull.id, None)
        self.recent[pull.id] = pull
        while len(self.recent) > RECENT:
            self.recent.popitem(last=False)
        self.metrics.in_flight.set(len(self.pulls))
        self.metrics.duration.labels(outcome).observe(pull.finished - pull.started)
        self.fanout.publish(pull.id, Published("pull", info, final=True))
        if not self.pulls:
            self.fanout.publish_idle()

    # ------------------------------------------------------------ readers
    def get(self, pull_id: str) -> Pull:
        pull = self.pulls.get(pull_id) or self.recent.get(pull_id)
        if pull is None:
            raise NotFound(f"no pull {pull_id!r} in flight or recently finished")
        return pull

    def infos(self, recent: bool = False) -> list[PullInfo]:
        now = asyncio.get_running_loop().time()
        pulls = list(self.pulls.values())
        if recent:
            pulls = list(self.recent.values()) + pulls
        return [p.info(now) for p in sorted(pulls, key=lambda p: p.started)]

    def watch(self, pull_id: str | None = None) -> Watcher:
        """A watcher of every pull (None) or of one (NotFound if unknown), primed with
        their current state."""
        only = self.get(pull_id) if pull_id is not None else None
        watcher = self.fanout.add(Watcher(pull_id))
        self.metrics.watchers.set(len(self.fanout.watchers))
        now = asyncio.get_running_loop().time()
        for pull in [only] if only is not None else list(self.pulls.values()):
            watcher.offer(pull.id, Published("pull", pull.info(now),
                                             final=pull.finished_at != 0))
        if only is None and not self.pulls:
            watcher.offer("", IDLE)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self.fanout.remove(watcher)
        self.metrics.watchers.set(len(self.fanout.watchers))

    async def close(self) -> None:
        for watcher in list(self.fanout.watchers):
            self.unwatch(watcher)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None

    # ------------------------------------------------------------ the ticker
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pulls:
            await asyncio.sleep(self.tick_interval)
            try:
                self.tick(loop.time())
            except Exception:  # a bug here must not stop progress, stalls or metrics
                log.exception("pull table tick failed")

    def tick(self, now: float) -> None:
        """One round: bytes and stalls of transfers, then rates, timeouts, log lines and
        updates of each pull."""
        for tr in self.transfers.values():
            if tr.done != tr.seen:
                tr.moved_at = now
                self._flush(tr)
        self._ticks += 1
        publish = bool(self.fanout.watchers) and self._ticks % self.publish_every() == 0
        for pull in list(self.pulls.values()):
            pull.samples.append((now, pull.transferred()))
            if pull.deadline is not None and self.progress_timeout > 0:
                self._check_stall(pull, now)
            if now - pull.logged >= LOG_EVERY:
                pull.logged = now
                self._log_progress(pull)
            if publish:
                signature = (pull.version, pull.bytes_done())
                if signature != pull.published:
                    pull.published = signature
                    self.fanout.publish(pull.id, Published("pull", pull.info(now)))

    def publish_every(self) -> int:
        """Ticks between intermediate updates: 1 until the watchers' writes a second for
        every pull in flight would pass WRITE_BUDGET."""
        writes = len(self.fanout.watchers) * max(len(self.pulls), 1) / self.tick_interval
        return max(1, math.ceil(writes / WRITE_BUDGET))

    def _flush(self, tr: Transfer) -> None:
        delta = tr.done - tr.seen
        tr.seen = tr.done
        if delta > 0:
            self.metrics.bytes.labels(tr.registry or "unknown").inc(delta)

    def _check_stall(self, pull: Pull, now: float) -> None:
        downloading = [e.transfer for e in pull.layers.values()
                       if e.transfer is not None and e.state not in ("exists", "done")
                       and e.transfer.state == "downloading"]
        if not downloading or pull.stall:
            return
        last = max(tr.moved_at for tr in downloading)
        if now - last < self.progress_timeout:
            return
        stalled = ", ".join(f"{tr.digest} at {tr.done} of {tr.size} bytes"
                            for tr in downloading)
        pull.stall = (f"pull of {pull.reference} made no progress for "
                      f"{now - last:.1f}s (image_pull_progress_timeout "
                      f"{self.progress_timeout:g}s): no bytes arrived for layer "
                      f"{stalled}")
        log.warning("pull stalled", image=pull.reference, pull=pull.id,
                    layers=[tr.digest for tr in downloading],
                    seconds=round(now - last, 1))
        assert pull.deadline is not None
        pull.deadline.reschedule(asyncio.get_running_loop().time())

    def _log_progress(self, pull: Pull) -> None:
        size, done = pull.size(), pull.bytes_done()
        left = sum(1 for e in pull.layers.values() if e.state not in ("exists", "done"))
        log.info("pull progress", image=pull.reference, pull=pull.id, state=pull.state,
                 done=done, total=size, rate=round(pull.rate()), layers_left=left,
                 seconds=round(pull.samples[-1][0] - pull.started, 1) if pull.samples else 0)


def _describe(error: BaseException, pull: Pull) -> tuple[str, str, str]:
    """(error kind, message, metrics reason) of a pull's failure."""
    if isinstance(error, DeadlineExceeded) and pull.stall:
        return error.kind, error.message, "no_progress"
    if isinstance(error, CribError):
        return error.kind, error.message, error.kind
    if isinstance(error, asyncio.CancelledError):
        return "cancelled", "the pull was cancelled (its caller went away)", "cancelled"
    return "internal", f"{type(error).__name__}: {error}", "internal"
