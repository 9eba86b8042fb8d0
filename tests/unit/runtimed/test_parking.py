"""Parking: creates that outlive their caller's deadline, and nothing held once collected."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from runtimed.parking import Parking


async def test_collected_create_is_not_held() -> None:
    """A create its caller collected is dropped at once, not kept for PARK_TTL (each one
    held its task, closure and request for five minutes)."""
    parking = Parking()
    tasks: list[weakref.ref[asyncio.Task[str]]] = []

    async def make() -> str:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(weakref.ref(task))
        return "id-1"

    assert await parking.run("ctr/pod/c_0", make) == "id-1"
    await asyncio.sleep(0)
    gc.collect()
    assert len(parking) == 0
    assert tasks and tasks[0]() is None


async def test_retry_collects_a_create_its_caller_gave_up_on() -> None:
    parking = Parking()
    calls = 0
    release = asyncio.Event()

    async def make() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return f"id-{calls}"

    first = asyncio.ensure_future(parking.run("pod/a_0", make))
    await asyncio.sleep(0)
    first.cancel()  # the caller's deadline
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()
    await asyncio.sleep(0.01)
    assert len(parking) == 1  # finished, parked for the retry
    assert await parking.run("pod/a_0", make) == "id-1"
    assert calls == 1
    assert len(parking) == 0


async def test_failed_create_is_forgotten() -> None:
    parking = Parking()
    attempts = 0

    async def make() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("runc failed")
        return "id-2"

    with pytest.raises(RuntimeError):
        await parking.run("ctr/pod/c_0", make)
    assert len(parking) == 0
    assert await parking.run("ctr/pod/c_0", make) == "id-2"
    assert attempts == 2
