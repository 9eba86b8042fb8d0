"""One-time tokens for streaming URLs: a request is stored under a random token and can be
consumed once, before it expires (kubelet `pkg/kubelet/cri/streaming/request_cache.go`)."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from crib_common.errors import ResourceExhausted

__all__ = ["RequestCache"]

T = TypeVar("T")

# kubelet's `maxInFlight`: more cached requests than this is a client bug or an attack.
MAX_IN_FLIGHT = 1000
# 16 random bytes, URL-safe (kubelet uses 8; more costs nothing).
TOKEN_BYTES = 16


@dataclass
class _Entry(Generic[T]):
    value: T
    expires: float


class RequestCache(Generic[T]):
    """Token -> request, each usable once within `ttl` seconds."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self._ttl = ttl
        self._clock = clock
        self._max = max_in_flight
        self._entries: OrderedDict[str, _Entry[T]] = OrderedDict()

    def insert(self, value: T) -> str:
        """Store `value`, return its fresh token; ResourceExhausted when too many wait."""
        self._expire()
        if len(self._entries) >= self._max:
            raise ResourceExhausted("too many streaming requests in flight")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._entries[token] = _Entry(value, self._clock() + self._ttl)
        return token

    def consume(self, token: str) -> T | None:
        """The request stored under `token`, removing it; None if unknown or expired."""
        entry = self._entries.pop(token, None)
        if entry is None or entry.expires <= self._clock():
            return None
        return entry.value

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def _expire(self) -> None:
        now = self._clock()
        # Entries are inserted in expiry order (one TTL), so the oldest are first.
        while self._entries:
            token, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                break
            del self._entries[token]
