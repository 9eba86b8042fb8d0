"""SPDY/3.1 framing and the connection, checked against the spec's byte layouts and plain
zlib rather than against our own decoder only."""

from __future__ import annotations

import asyncio
import socket
import struct
import zlib
from collections.abc import AsyncIterator

import pytest

from runtimed.streaming.spdy import (
    SPDY_DICTIONARY,
    HeaderCompressor,
    SpdyConnection,
    SpdyError,
    SpdyStream,
    decode_headers,
    encode_headers,
)


def test_dictionary_matches_spec_shape() -> None:
    # draft-mbelshe-httpbis-spdy-00 2.6.10.1: starts with "\0\0\0\7options", ends "enq=0.".
    assert SPDY_DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert SPDY_DICTIONARY.endswith(b",*,enq=0.")
    assert len(SPDY_DICTIONARY) == 1423


def test_header_block_layout() -> None:
    raw = encode_headers({"StreamType": ["error"], "port": ["80", "81"]})
    assert raw == (struct.pack(">I", 2) + struct.pack(">I", 10) + b"streamtype" +
                   struct.pack(">I", 5) + b"error" + struct.pack(">I", 4) + b"port" +
                   struct.pack(">I", 5) + b"80\x0081")
    assert decode_headers(raw) == {"streamtype": ["error"], "port": ["80", "81"]}


def test_compressed_blocks_inflate_with_plain_zlib_and_dictionary() -> None:
    comp = HeaderCompressor()
    first = comp.compress({"streamtype": ["stdout"]})
    second = comp.compress({"streamtype": ["stderr"]})
    z = zlib.decompressobj(zdict=SPDY_DICTIONARY)
    # The zlib header names the dictionary by its Adler-32 (RFC 1950 FDICT).
    assert first[1] & 0x20
    assert struct.unpack(">I", first[2:6])[0] == zlib.adler32(SPDY_DICTIONARY)
    assert decode_headers(z.decompress(first)) == {"streamtype": ["stdout"]}
    assert decode_headers(z.decompress(second)) == {"streamtype": ["stderr"]}


def test_truncated_block_is_an_error() -> None:
    with pytest.raises(SpdyError):
        decode_headers(struct.pack(">I", 1) + struct.pack(">I", 100) + b"x")


@pytest.fixture
async def pair() -> AsyncIterator[tuple[SpdyConnection, SpdyConnection, list[SpdyStream]]]:
    a, b = socket.socketpair()
    accepted: list[SpdyStream] = []
    cr, cw = await asyncio.open_unix_connection(sock=a)
    sr, sw = await asyncio.open_unix_connection(sock=b)
    client = SpdyConnection(cr, cw, client=True)
    server = SpdyConnection(sr, sw, client=False, on_stream=accepted.append)
    tasks = [asyncio.create_task(client.run()), asyncio.create_task(server.run())]
    try:
        yield client, server, accepted
    finally:
        await client.close()
        await server.close()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_streams_data_fin_and_ping(pair: tuple[SpdyConnection, SpdyConnection,
                                                     list[SpdyStream]]) -> None:
    client, _server, accepted = pair
    s1 = await client.open_stream({"streamtype": ["stdin"]})
    s2 = await client.open_stream({"streamtype": ["stdout"]})
    assert (s1.id, s2.id) == (1, 3)  # client streams are odd
    assert [s.header("streamtype") for s in accepted] == ["stdin", "stdout"]
    big = bytes(range(256)) * 1000  # several frames, and window updates on the way back
    await s1.write(big)
    await s1.close()
    assert await accepted[0].read_all() == big
    await accepted[1].write(b"out")
    await accepted[1].close()
    assert await s2.read_all() == b"out"
    await client.ping()


async def test_reset_ends_both_halves(pair: tuple[SpdyConnection, SpdyConnection,
                                                  list[SpdyStream]]) -> None:
    client, _server, accepted = pair
    s = await client.open_stream({"streamtype": ["data"]})
    accepted[0].abort()
    assert await asyncio.wait_for(s.read(), 5) == b""
    assert s.reset
    with pytest.raises(SpdyError):
        await s.write(b"x")


async def test_goaway_ends_the_session(pair: tuple[SpdyConnection, SpdyConnection,
                                                   list[SpdyStream]]) -> None:
    client, server, _ = pair
    await client.close()
    for _ in range(100):
        if server.closed:
            break
        await asyncio.sleep(0.01)
    assert server.closed


async def test_unread_stream_applies_backpressure(
        pair: tuple[SpdyConnection, SpdyConnection, list[SpdyStream]]) -> None:
    from runtimed.streaming.spdy import MAX_BUFFERED, MAX_DATA

    client, _server, accepted = pair
    s = await client.open_stream({"streamtype": ["stdin"]})
    data = bytes(range(256)) * (10 * 4096)  # 10 MiB

    async def send() -> None:
        await s.write(data)
        await s.close()

    sender = asyncio.create_task(send())
    await asyncio.sleep(0.3)
    # The server stopped reading frames once the stream held its limit: no unbounded queue.
    assert accepted[0]._buffered <= MAX_BUFFERED + MAX_DATA
    assert not sender.done()
    assert await asyncio.wait_for(accepted[0].read_all(limit=1 << 30), 10) == data
    await sender
