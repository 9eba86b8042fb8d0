"""The pull table's fan-out: a watcher that never reads holds at most one update per pull
and is closed as lagged past its limit (imaged's memory does not grow with what it did
not read); intermediate updates are coalesced, a pull's final one is never dropped;
hundreds of watchers cost the publisher a dictionary store each."""

from __future__ import annotations

import asyncio
import tracemalloc

from crib_common.models.imaged import PullInfo, PullRequester
from imaged.pulls.fanout import IDLE, WATCHER_LIMIT, Fanout, Published, Watcher
from imaged.pulls.table import PullTable


def _update(pull_id: str, done: int, final: bool = False) -> Published:
    info = PullInfo(id=pull_id, reference="r", requester=PullRequester(kind="cri"),
                    state="done" if final else "pulling", started_at=0, size=100, done=done)
    return Published("pull", info, final=final)


async def test_slow_watcher_gets_the_latest_and_every_final() -> None:
    fanout = Fanout()
    watcher = fanout.add(Watcher(None))
    for done in range(1000):
        fanout.publish("a", _update("a", done))
        fanout.publish("b", _update("b", done))
    fanout.publish("a", _update("a", 100, final=True))
    fanout.publish("a", _update("a", 5))  # nothing replaces a final
    batch = await watcher.next()
    assert [(u.info.id, u.info.done, u.final) for u in batch if u.info] == [
        ("b", 999, False), ("a", 100, True)]


async def test_never_reading_watcher_stays_bounded_then_lags() -> None:
    table = PullTable(0)
    stuck = table.watch(None)  # never read
    reader = table.watch(None)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        # Many pulls, each with many updates: the stuck watcher keeps one slot per pull.
        for i in range(WATCHER_LIMIT - 1):
            for done in range(200):
                table.fanout.publish(f"p{i}", _update(f"p{i}", done))
            await asyncio.sleep(0)
            await reader.next()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    # IDLE (from watch) was replaced by the first pull: one slot per pull, no more.
    assert stuck.pending() == WATCHER_LIMIT - 1 and not stuck.lagged
    # 12,600 updates went by; the stuck watcher holds the last of each pull only (the
    # updates themselves are shared with every other watcher).
    assert grown < 200_000, grown
    for i in range(WATCHER_LIMIT, WATCHER_LIMIT + 50):
        table.fanout.publish(f"p{i}", _update(f"p{i}", 1))
    # Past its limit: closed, emptied, one "lagged" marker left to read.
    assert stuck.lagged and stuck.closed and stuck.pending() == 1
    assert [u.type for u in await stuck.next()] == ["lagged"]
    assert await stuck.next() == []
    # Publishing to a closed watcher keeps nothing.
    table.fanout.publish("x", _update("x", 1))
    assert stuck.pending() == 0
    table.unwatch(stuck)
    table.unwatch(reader)
    assert not table.fanout.watchers
    assert table.metrics.watchers._value.get() == 0


async def test_idle_marker_gives_way_to_a_new_pull() -> None:
    fanout = Fanout()
    watcher = fanout.add(Watcher(None))
    fanout.publish_idle()
    fanout.publish("a", _update("a", 1))
    assert [u.type for u in await watcher.next()] == ["pull"]
    fanout.publish_idle()
    assert await watcher.next() == [IDLE]


async def test_one_pull_watcher_ignores_others() -> None:
    fanout = Fanout()
    watcher = fanout.add(Watcher("a"))
    fanout.publish("b", _update("b", 1))
    fanout.publish_idle()
    assert watcher.pending() == 0
    fanout.publish("a", _update("a", 1))
    assert watcher.pending() == 1


async def test_hundreds_of_watchers_share_one_update() -> None:
    """Publishing is a dictionary store per watcher, never a wait; the update (and its
    encoded line) is one object for all of them."""
    fanout = Fanout()
    watchers = [fanout.add(Watcher(None)) for _ in range(500)]
    for done in range(40):  # 10 s of one pull's updates at 4 a second
        fanout.publish("a", _update("a", done))
    assert all(w.pending() == 1 for w in watchers)
    batches = [await w.next() for w in watchers]
    assert len({id(b[0]) for b in batches}) == 1 and batches[0][0].info is not None
    assert batches[0][0].info.done == 39
    assert len({id(b[0].line) for b in batches}) == 1
