"""The pull table's ticker on a made-up clock: the no-progress timeout trips only while a
layer downloads and nothing arrives, names the layer and the stall; a transfer two pulls
share shows its bytes in both; bytes are counted by registry once."""

from __future__ import annotations

import asyncio

import pytest

from crib_common.models.imaged import PullRequester
from imaged.pulls.table import PullTable


async def test_stall_trips_only_while_downloading_without_bytes() -> None:
    table = PullTable(progress_timeout=10.0, tick=3600)  # ticks driven by hand
    pull = table.open("reg.example/app:v1", PullRequester(kind="cri"))
    pull.registry = "reg.example"
    table.set_layers(pull, [("sha256:aa", 1000)])
    tr = table.attach(pull, "sha256:aa")
    loop = asyncio.get_running_loop()

    async def body() -> None:
        async with asyncio.timeout(None) as deadline:
            pull.deadline = deadline
            await asyncio.sleep(3600)

    task = asyncio.ensure_future(body())
    await asyncio.sleep(0)
    t0 = loop.time()
    table.tick(t0 + 100)  # waiting for a download slot: no stall, however long
    assert not pull.stall
    tr.state, tr.moved_at = "downloading", t0 + 100
    tr.done = 400
    table.tick(t0 + 105)  # bytes came: moved_at is now
    table.tick(t0 + 114)  # 9 s without a byte
    assert not pull.stall
    table.tick(t0 + 115.5)
    assert "made no progress for 10.5s" in pull.stall
    assert "sha256:aa at 400 of 1000 bytes" in pull.stall
    with pytest.raises(TimeoutError):
        await task
    assert table.metrics.bytes.labels("reg.example")._value.get() == 400
    table.finish(pull, error=TimeoutError())
    await table.close()


async def test_shared_transfer_counts_in_both_pulls() -> None:
    table = PullTable(progress_timeout=0, tick=3600)
    a = table.open("r/a", PullRequester(kind="cri"))
    b = table.open("r/b", PullRequester(kind="cli"))
    for pull in (a, b):
        table.set_layers(pull, [("sha256:s", 1000), (f"sha256:{pull.id}", 10)])
    tr = table.attach(a, "sha256:s")
    assert table.attach(b, "sha256:s") is tr
    table.layer_present(b, f"sha256:{b.id}")
    tr.state, tr.done = "downloading", 600
    now = asyncio.get_running_loop().time()
    ia, ib = a.info(now), b.info(now)
    assert ia.layers[0].state == "downloading" and ia.layers[0].done == 600
    assert ib.layers[0].state == "shared" and ib.layers[0].shared_with == a.id
    assert ib.layers[0].done == 600 and ib.done == 610 and ib.size == 1010
    # The first pull gone, the second owns the transfer and shows its real state.
    table.finish(a, error=asyncio.CancelledError())
    assert b.info(now).layers[0].state == "downloading"
    assert table.get(a.id).state == "failed" and table.get(a.id).error_kind == "cancelled"
    table.finish(b, image_id="sha256:img")
    assert not table.transfers and not table.pulls
    assert [p.id for p in table.infos(recent=True)] == [a.id, b.id]
    await table.close()


async def test_many_watchers_get_updates_less_often() -> None:
    """A few updates a second per pull for a few watchers; with hundreds the interval
    grows so that stream writes stay near WRITE_BUDGET a second."""
    table = PullTable(progress_timeout=0, tick=0.25)
    pull = table.open("r/a", PullRequester(kind="cri"))
    table.set_layers(pull, [("sha256:s", 10_000_000)])
    tr = table.attach(pull, "sha256:s")
    few = [table.watch(None) for _ in range(5)]
    assert table.publish_every() == 1
    many = few + [table.watch(None) for _ in range(295)]
    assert table.publish_every() == 3  # 300 x 4 a second / 400
    for w in many:
        await w.next()  # drain the priming state
    now = asyncio.get_running_loop().time()
    published = 0
    for i in range(12):  # 3 s of ticks, bytes moving on each
        tr.done += 1000
        table.tick(now + i * 0.25)
        if few[0].pending():
            published += 1
            for w in many:
                await w.next()
    assert published == 4
    # The end goes out at once, whatever the interval.
    table.finish(pull, image_id="sha256:img")
    assert all(w.pending() == 2 for w in many)  # the final, and idle
    await table.close()
