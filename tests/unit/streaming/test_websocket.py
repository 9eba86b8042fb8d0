"""WebSocket handshake key, masking, and k8s resize parsing."""

from __future__ import annotations

from runtimed.streaming.session import StdioOptions, WsStdioSession
from runtimed.streaming.status import exit_status, status_bytes
from runtimed.streaming.websocket import _unmask, accept_key, valid_key


def test_accept_key_rfc6455_example() -> None:
    # RFC 6455 section 1.3.
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert valid_key("dGhlIHNhbXBsZSBub25jZQ==")
    assert not valid_key("short")


def test_unmask_is_xor_with_repeated_key() -> None:
    mask = b"\x01\x02\x03\x04"
    data = b"hello world"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert _unmask(masked, mask) == data
    assert _unmask(b"", mask) == b""


def test_resize_objects_split_across_messages() -> None:
    session = WsStdioSession.__new__(WsStdioSession)
    import asyncio
    session.resizes = asyncio.Queue()
    rest = session._push_resize(b'{"Width":80,"Height":24}{"Width":1')
    assert rest == b'{"Width":1'
    rest = session._push_resize(rest + b'00,"Height":30}\n')
    assert rest == b""
    assert [session.resizes.get_nowait() for _ in range(2)] == [(80, 24), (100, 30)]
    assert StdioOptions(True, True, False, True).tty


def test_status_formats() -> None:
    assert status_bytes(exit_status(0), 4) == b'{"metadata":{},"status":"Success"}'
    assert status_bytes(exit_status(0), 3) == b""
    assert b'"message":"3"' in status_bytes(exit_status(3), 5)
    assert status_bytes(exit_status(3), 2).startswith(b"command terminated")


async def test_byte_queue_bounds_and_discard() -> None:
    import asyncio

    from runtimed.streaming.websocket import ByteQueue

    q = ByteQueue(limit=10)
    await q.put(b"x" * 11)  # over the limit: the next put waits
    blocked = asyncio.create_task(q.put(b"y"))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    assert await q.get() == b"x" * 11
    await asyncio.wait_for(blocked, 1)
    assert await q.get() == b"y"
    q.discard()
    await asyncio.wait_for(q.put(b"z" * 100), 1)  # dropped, never blocks
    q.end()
    assert await q.get() == b""
    assert await q.get() == b""
