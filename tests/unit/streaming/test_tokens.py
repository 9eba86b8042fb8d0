"""One-time tokens: single use, expiry, bounded."""

from __future__ import annotations

import pytest

from crib_common.errors import ResourceExhausted
from runtimed.streaming.tokens import RequestCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_consume_once() -> None:
    cache: RequestCache[str] = RequestCache(10, Clock())
    token = cache.insert("req")
    assert len(token) >= 16
    assert cache.consume(token) == "req"
    assert cache.consume(token) is None


def test_expiry() -> None:
    clock = Clock()
    cache: RequestCache[str] = RequestCache(10, clock)
    token = cache.insert("req")
    clock.now += 10
    assert cache.consume(token) is None
    assert len(cache) == 0


def test_tokens_are_unique_and_bounded() -> None:
    clock = Clock()
    cache: RequestCache[int] = RequestCache(10, clock, max_in_flight=3)
    tokens = {cache.insert(i) for i in range(3)}
    assert len(tokens) == 3
    with pytest.raises(ResourceExhausted):
        cache.insert(4)
    clock.now += 11  # expired entries make room again
    cache.insert(5)
