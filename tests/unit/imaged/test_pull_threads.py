"""A cancelled pull never leaves a store thread running behind it.

Regression: a pull failed while another layer's commit was in its thread; the cancel
returned at once, the pull collected its garbage and the commit then renamed the blob into
the store (and left its ingest record) after the failed pull had returned.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from imaged.pull import _settled


async def test_cancel_waits_for_the_thread_and_undoes_its_result() -> None:
    entered, release = threading.Event(), threading.Event()
    finished: list[str] = []
    undone: list[str] = []

    def slow() -> str:
        entered.set()
        release.wait(5)
        finished.append("made")
        return "made"

    task = asyncio.ensure_future(_settled(slow, on_cancel=undone.append))
    await asyncio.to_thread(entered.wait, 5)
    task.cancel()
    await asyncio.sleep(0.05)
    # The cancel waits for the thread instead of returning while it still writes.
    assert not task.done()
    task.cancel()  # a second cancel while waiting changes nothing
    await asyncio.sleep(0.05)
    assert not task.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == ["made"]
    assert undone == ["made"]


async def test_cancel_of_a_failing_thread_is_a_cancel() -> None:
    entered, release = threading.Event(), threading.Event()

    def fails() -> None:
        entered.set()
        release.wait(5)
        raise OSError("disk full")

    task = asyncio.ensure_future(_settled(fails, on_cancel=lambda _: pytest.fail("undo")))
    await asyncio.to_thread(entered.wait, 5)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_uncancelled_result_and_error_pass_through() -> None:
    assert await _settled(lambda a, b: a + b, 2, 3) == 5

    def boom() -> None:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await _settled(boom)
