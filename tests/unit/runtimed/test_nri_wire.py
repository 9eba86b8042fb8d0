"""NRI's wire, byte for byte: the multiplexer's frames (containerd/nri
pkg/net/multiplex/mux.go), ttrpc's message header and its Request/Response envelope
(containerd/ttrpc PROTOCOL.md, request.proto) and NRI messages (api.proto). Expected
bytes are written out by hand from those definitions, not produced by our encoders."""

from __future__ import annotations

import asyncio

import pytest

from crib_common.nri import v1alpha1 as api
from runtimed.nri.mux import Mux, frames
from runtimed.nri.plugin import ALL_EVENTS, event_bit
from runtimed.nri.ttrpc import (
    Channel,
    Client,
    Request,
    Response,
    decode_request,
    decode_response,
    encode_message,
    encode_request,
    encode_response,
)

# "nri.pkg.api.v1alpha1.Plugin" is 27 bytes, "Configure" 9.
SERVICE = b"nri.pkg.api.v1alpha1.Plugin"
CONFIGURE_REQUEST = (
    b"\x0a\x1b" + SERVICE            # field 1 (service), wire type 2, length 27
    + b"\x12\x09Configure"           # field 2 (method), length 9
    + b"\x1a\x02\x10\x05"            # field 3 (payload): ConfigureResponse{events: 5}
    + b"\x20\x80\xa8\xd6\xb9\x07"    # field 4 (timeout_nano) varint 2_000_000_000
)


def test_frame_is_conn_id_then_length_big_endian() -> None:
    assert frames(1, b"abc") == [b"\x00\x00\x00\x01\x00\x00\x00\x03abc"]
    assert frames(2, b"") == [b"\x00\x00\x00\x02\x00\x00\x00\x00"]


def test_first_frame_of_a_long_message_is_4096_bytes() -> None:
    message = bytes(range(256)) * 20  # 5120 bytes
    out = frames(1, message)
    assert [len(f) for f in out] == [8 + 4096, 8 + 1024]
    assert out[0][:8] == b"\x00\x00\x00\x01\x00\x00\x10\x00"
    assert out[1][:8] == b"\x00\x00\x00\x01\x00\x00\x04\x00"
    assert out[0][8:] + out[1][8:] == message
    assert frames(1, b"x" * 4096) == [b"\x00\x00\x00\x01\x00\x00\x10\x00" + b"x" * 4096]


def test_oversized_message_is_refused() -> None:
    with pytest.raises(ValueError):
        frames(1, b"\0" * (10 + (4 << 20) + 1))


def test_ttrpc_header() -> None:
    # length 3, stream 1, type request (1), flags 0
    assert encode_message(1, 1, 0, b"xyz") == \
        b"\x00\x00\x00\x03\x00\x00\x00\x01\x01\x00xyz"
    assert encode_message(0x01020304, 2, 0, b"") == \
        b"\x00\x00\x00\x00\x01\x02\x03\x04\x02\x00"


def test_ttrpc_request_envelope() -> None:
    req = Request(service=SERVICE.decode(), method="Configure", payload=b"\x10\x05",
                  timeout_nano=2_000_000_000)
    assert encode_request(req) == CONFIGURE_REQUEST
    back = decode_request(CONFIGURE_REQUEST + b"\x2a\x06\x0a\x01k\x12\x01v")
    assert (back.service, back.method, back.payload, back.timeout_nano, back.metadata) == \
        (SERVICE.decode(), "Configure", b"\x10\x05", 2_000_000_000, [("k", "v")])


def test_ttrpc_response_envelope() -> None:
    # Response{status: Status{code: 12, message: "nope"}}: field 1 holds 08 0c 12 04 nope
    error = b"\x0a\x08\x08\x0c\x12\x04nope"
    assert encode_response(Response(code=12, message="nope")) == error
    assert decode_response(error) == Response(payload=b"", code=12, message="nope")
    ok = b"\x12\x02\x10\x05"  # Response{payload: ConfigureResponse{events: 5}}
    assert encode_response(Response(payload=b"\x10\x05")) == ok
    assert decode_response(ok) == Response(payload=b"\x10\x05")


def test_nri_messages_and_event_bits() -> None:
    # RegisterPluginRequest{plugin_name: "a", plugin_idx: "05"}
    assert bytes(api.RegisterPluginRequest(plugin_name="a", plugin_idx="05")) == \
        b"\x0a\x01a\x12\x0205"
    # ConfigureResponse.events is field 2; bit (event - 1): RunPodSandbox 1 -> 0x1,
    # CreateContainer 4 -> 0x8, RemoveContainer 11 -> 0x400.
    assert event_bit(api.Event.RUN_POD_SANDBOX) == 0x1
    assert event_bit(api.Event.CREATE_CONTAINER) == 0x8
    assert event_bit(api.Event.REMOVE_CONTAINER) == 0x400
    assert ALL_EVENTS == 0x3FFF  # the 14 events below LAST (15)
    assert api.ConfigureResponse().parse(b"\x10\x89\x04").events == 0x209


class _Sink:
    """A StreamWriter stand-in that keeps what is written."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writelines(self, chunks: list[bytes]) -> None:
        for c in chunks:
            self.data += c

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None

    def get_extra_info(self, _name: str) -> None:
        return None


async def test_messages_reassembled_from_any_frames() -> None:
    reader = asyncio.StreamReader()
    mux = Mux(reader, _Sink())  # type: ignore[arg-type]
    got: list[tuple[int, int, bytes]] = []
    Channel(mux, 1, lambda sid, kind, _f, data: got.append((sid, kind, data)))
    mux.start()
    one = b"\x00\x00\x00\x03\x00\x00\x00\x01\x02\x00abc"
    two = b"\x00\x00\x00\x02\x00\x00\x00\x03\x02\x00hi"
    stream = one + two
    # Split at odd places, and one frame for a connection nobody opened (dropped).
    reader.feed_data(b"\x00\x00\x00\x01\x00\x00\x00\x05" + stream[:5])
    reader.feed_data(b"\x00\x00\x00\x07\x00\x00\x00\x02zz")
    reader.feed_data(b"\x00\x00\x00\x01" + len(stream[5:]).to_bytes(4, "big") + stream[5:])
    for _ in range(5):
        await asyncio.sleep(0)
    assert got == [(1, 2, b"abc"), (3, 2, b"hi")]
    await mux.close()


async def test_client_stream_ids_odd_increasing_on_the_wire() -> None:
    reader = asyncio.StreamReader()
    sink = _Sink()
    mux = Mux(reader, sink)  # type: ignore[arg-type]
    client = Client(mux, 1)
    mux.start()
    calls = [asyncio.ensure_future(client.call("s", f"m{i}", b"", 5)) for i in range(3)]
    await asyncio.sleep(0)
    ids = []
    data = bytes(sink.data)
    while data:
        length = int.from_bytes(data[4:8], "big")
        frame, data = data[8:8 + length], data[8 + length:]
        ids.append(int.from_bytes(frame[4:8], "big"))
    assert ids == [1, 3, 5]
    # Answer stream 3 with an error, then close: the rest fail as closed.
    body = b"\x0a\x08\x08\x0c\x12\x04nope"
    msg = len(body).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"\x02\x00" + body
    reader.feed_data(b"\x00\x00\x00\x01" + len(msg).to_bytes(4, "big") + msg)
    reader.feed_eof()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert "ttrpc status 12: nope" in str(results[1])
    assert all(isinstance(r, ConnectionError) for r in (results[0], results[2]))
