"""grpclib's `Server`, with each connection's writes coalesced into one per loop turn.

grpclib writes a unary answer as several `transport.write` calls (HEADERS, DATA, trailing
HEADERS, WINDOW_UPDATE), each a syscall that wakes the kubelet's reader, which then
handles a fragment of the answer and sleeps again. Buffering the writes of one event-loop
turn and sending them with one `write` gives one wake-up per answer. Order is preserved,
and nothing waits longer than the end of the current loop iteration.
"""

from __future__ import annotations

import asyncio
from typing import Any

from grpclib.protocol import H2Protocol
from grpclib.server import Server

__all__ = ["CoalescingServer"]


class _CoalescingTransport:
    """Delegates to a transport; `write` is buffered until the loop's next turn."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def _flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _CoalescingProtocol(H2Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_CoalescingTransport(transport))  # type: ignore[arg-type]


class CoalescingServer(Server):
    """A grpclib `Server` whose connections coalesce writes (see the module docstring)."""

    def _protocol_factory(self) -> H2Protocol:
        base = super()._protocol_factory()
        # Same handler and configuration; only the transport the protocol sees changes.
        return _CoalescingProtocol(base.handler, base.config, base.h2_config)
