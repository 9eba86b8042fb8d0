"""The coalescing transport under the gateway's grpclib server."""

from __future__ import annotations

import asyncio
from typing import Any

from cri_gateway.server import CoalescingServer, _CoalescingProtocol, _CoalescingTransport
from cri_gateway.forward import PassthroughCodec


class _Recorder:
    """Just enough of an asyncio transport to see what reaches the socket."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def test_writes_of_one_loop_turn_become_one_write_in_order() -> None:
    raw = _Recorder()
    t = _CoalescingTransport(raw)  # type: ignore[arg-type]
    t.write(b"HEADERS")
    t.write(b"")
    t.write(bytearray(b"DATA"))
    t.write(memoryview(b"TRAILERS"))
    assert raw.writes == []  # nothing before the loop turns
    await asyncio.sleep(0)
    assert raw.writes == [b"HEADERSDATATRAILERS"]
    t.write(b"next")
    await asyncio.sleep(0)
    assert raw.writes[-1] == b"next"
    assert t.get_extra_info("socket") is None  # everything else is delegated


async def test_close_flushes_first() -> None:
    raw = _Recorder()
    t = _CoalescingTransport(raw)  # type: ignore[arg-type]
    t.write(b"last words")
    t.close()
    assert raw.writes == [b"last words"] and raw.closed
    await asyncio.sleep(0)
    assert raw.writes == [b"last words"]  # the scheduled flush finds nothing left


async def test_server_builds_coalescing_protocols() -> None:
    server = CoalescingServer([], codec=PassthroughCodec())
    assert isinstance(server._protocol_factory(), _CoalescingProtocol)
