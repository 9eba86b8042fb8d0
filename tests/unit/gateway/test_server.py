"""The gateway's gRPC server (cri_gateway.server) against a real HTTP/2 client.

The `h2` library (grpclib's own dependency) plays the client, so each test can do what a
gRPC client library hides: small windows, split header blocks, resets, pings, bad input.
test_forward.py covers the gateway's calls through grpclib's client on the same server.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import h2.config
import h2.errors
import h2.connection
import h2.events
import h2.settings
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from cri_gateway.server import CallStream, GrpcServer, encode_grpc_message, parse_grpc_timeout

GRPC_HEADERS = [(":method", "POST"), (":scheme", "http"), (":authority", "crib"),
                ("content-type", "application/grpc"), ("te", "trailers")]


def _message(data: bytes) -> bytes:
    return struct.pack(">?I", False, len(data)) + data


class Handler:
    """What the tests' server answers, by path."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(self, path: str, call: CallStream) -> None:
        body = call.request()
        if path == "/t/Echo":
            await call.send_message(body[5:])
        elif path == "/t/Big":
            await call.send_message(b"x" * 100_000)
        elif path == "/t/Fail":
            raise GRPCError(Status.NOT_FOUND, "pod 'p1' not found: ünïcode 100%")
        elif path == "/t/Slow":
            self.started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        elif path == "/t/Size":
            await call.send_message(str(len(body)).encode())
        elif path == "/t/Stream":
            await call.send_initial_metadata()
            for i in range(3):
                await call.send_message(b"m%d" % i)
        else:
            raise RuntimeError("a bug")


class Client:
    """An h2 client connection on the server's socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 window: int | None = None) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        if window is not None:
            self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.events: list[h2.events.Event] = []
        self.flush()

    def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())

    async def until(self, done: type[h2.events.Event], stream_id: int,
                    auto_window: bool = True) -> list[h2.events.Event]:
        """Read until `done` arrives for `stream_id`; every event of the stream."""
        async with asyncio.timeout(5):
            while True:
                for event in self.events:
                    if isinstance(event, done) and getattr(event, "stream_id", 0) == stream_id:
                        return [e for e in self.events
                                if getattr(e, "stream_id", None) in (stream_id, 0)]
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                for event in self.h2.receive_data(data):
                    self.events.append(event)
                    if auto_window and isinstance(event, h2.events.DataReceived):
                        self.h2.acknowledge_received_data(event.flow_controlled_length,
                                                          event.stream_id)
                self.flush()

    def call(self, path: str, body: bytes, extra: list[tuple[str, str]] | None = None,
             end: bool = True) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, [(":path", path), *GRPC_HEADERS, *(extra or [])])
        self.h2.send_data(stream_id, body, end_stream=end)
        self.flush()
        return stream_id


def _data(events: list[h2.events.Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))


def _trailers(events: list[h2.events.Event]) -> dict[str, str]:
    out: dict[str, str] = {}
    for e in events:
        if isinstance(e, (h2.events.TrailersReceived, h2.events.ResponseReceived)):
            out.update({k.decode(): v.decode() for k, v in e.headers})
    return out


@pytest.fixture()
async def served(tmp_path: Path) -> AsyncIterator[tuple[Path, Handler]]:
    handler = Handler()
    server = GrpcServer(handler, max_request=1000)
    path = tmp_path / "cri.sock"
    await server.start(str(path))
    try:
        yield path, handler
    finally:
        server.close()
        await server.wait_closed()


async def _client(path: Path, window: int | None = None) -> Client:
    reader, writer = await asyncio.open_unix_connection(str(path))
    return Client(reader, writer, window)


def test_grpc_message_is_percent_encoded() -> None:
    assert encode_grpc_message("plain text") == b"plain text"
    assert encode_grpc_message("100% ü\n") == b"100%25 %C3%BC%0A"


def test_grpc_timeout_units() -> None:
    assert parse_grpc_timeout("100m") == pytest.approx(0.1)
    assert parse_grpc_timeout("2S") == 2
    assert parse_grpc_timeout("1H") == 3600
    assert parse_grpc_timeout("5000u") == pytest.approx(0.005)
    for bad in ("", "10", "m", "1x", "123456789S"):
        assert parse_grpc_timeout(bad) is None


async def test_unary_answer_with_headers_data_and_trailers(served: tuple[Path, Handler]) -> None:
    client = await _client(served[0])
    sid = client.call("/t/Echo", _message(b"hello"))
    events = await client.until(h2.events.StreamEnded, sid)
    assert _data(events) == _message(b"hello")
    headers = _trailers(events)
    assert headers[":status"] == "200" and headers["content-type"] == "application/grpc"
    assert headers["grpc-status"] == "0"
    # Several calls on one connection, one after another and at once.
    ids = [client.call("/t/Echo", _message(b"n%d" % i)) for i in range(5)]
    for i, sid in enumerate(ids):
        assert _data(await client.until(h2.events.StreamEnded, sid)) == _message(b"n%d" % i)


async def test_errors_are_trailers_only_with_encoded_message(
    served: tuple[Path, Handler]
) -> None:
    client = await _client(served[0])
    sid = client.call("/t/Fail", _message(b""))
    events = await client.until(h2.events.StreamEnded, sid)
    assert _data(events) == b""
    headers = _trailers(events)
    assert headers["grpc-status"] == str(Status.NOT_FOUND.value)
    assert headers["grpc-message"] == "pod 'p1' not found: %C3%BCn%C3%AFcode 100%25"
    sid = client.call("/t/Crash", _message(b""))
    assert _trailers(await client.until(h2.events.StreamEnded, sid))["grpc-status"] == \
        str(Status.UNKNOWN.value)


async def test_answer_waits_for_the_clients_window(served: tuple[Path, Handler]) -> None:
    client = await _client(served[0], window=1000)
    sid = client.call("/t/Big", _message(b""))
    # Without credit the server stops at the client's window...
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await client.until(h2.events.StreamEnded, sid, auto_window=False)
    assert len(_data(client.events)) == 1000
    # ...and goes on as credit comes back.
    client.h2.increment_flow_control_window(200_000)
    client.h2.increment_flow_control_window(200_000, sid)
    client.flush()
    events = await client.until(h2.events.StreamEnded, sid)
    assert _data(events) == _message(b"x" * 100_000)


async def test_server_streaming(served: tuple[Path, Handler]) -> None:
    client = await _client(served[0])
    sid = client.call("/t/Stream", _message(b""))
    events = await client.until(h2.events.StreamEnded, sid)
    assert _data(events) == b"".join(_message(b"m%d" % i) for i in range(3))
    assert _trailers(events)["grpc-status"] == "0"


async def test_split_header_block_is_decoded(served: tuple[Path, Handler]) -> None:
    client = await _client(served[0])
    # A header larger than one frame: h2 sends HEADERS and CONTINUATION.
    sid = client.call("/t/Echo", _message(b"ok"), extra=[("x-big", "v" * 40_000)])
    events = await client.until(h2.events.StreamEnded, sid)
    assert _data(events) == _message(b"ok")


async def test_reset_cancels_the_call(served: tuple[Path, Handler]) -> None:
    path, handler = served
    client = await _client(path)
    sid = client.call("/t/Slow", _message(b""))
    await asyncio.wait_for(handler.started.wait(), 5)
    client.h2.reset_stream(sid)
    client.flush()
    await asyncio.wait_for(handler.cancelled.wait(), 5)
    # The connection still serves.
    sid = client.call("/t/Echo", _message(b"after"))
    assert _data(await client.until(h2.events.StreamEnded, sid)) == _message(b"after")


async def test_deadline_from_grpc_timeout(served: tuple[Path, Handler]) -> None:
    path, handler = served
    client = await _client(path)
    sid = client.call("/t/Slow", _message(b""), extra=[("grpc-timeout", "200m")])
    events = await client.until(h2.events.StreamEnded, sid)
    assert _trailers(events)["grpc-status"] == str(Status.DEADLINE_EXCEEDED.value)
    assert handler.cancelled.is_set()


async def test_deadline_mid_message_resets_the_stream(served: tuple[Path, Handler]) -> None:
    """A deadline while the answer waits for the client's window: the message is cut, so
    the stream is reset (CANCEL), not ended with a status after a truncated message
    (which grpc-go reads as INTERNAL "unexpected EOF"). The connection still serves."""
    client = await _client(served[0], window=1000)
    sid = client.call("/t/Big", _message(b""), extra=[("grpc-timeout", "200m")])
    events = await client.until(h2.events.StreamReset, sid, auto_window=False)
    reset = [e for e in events if isinstance(e, h2.events.StreamReset)]
    assert reset[0].error_code == h2.errors.ErrorCodes.CANCEL
    assert len(_data(events)) == 1000
    assert not any(isinstance(e, (h2.events.TrailersReceived, h2.events.StreamEnded))
                   for e in events), events
    client.h2.increment_flow_control_window(200_000)
    client.flush()
    sid = client.call("/t/Echo", _message(b"after"))
    assert _data(await client.until(h2.events.StreamEnded, sid)) == _message(b"after")


async def test_oversized_request_is_answered_from_its_prefix(
    served: tuple[Path, Handler]
) -> None:
    client = await _client(served[0])
    # Declares 5000 bytes (limit 1000) and sends the first 100 without ending: the
    # handler sees the prefix alone, and the rest is not waited for.
    sid = client.call("/t/Size", struct.pack(">?I", False, 5000) + b"y" * 100, end=False)
    events = await client.until(h2.events.StreamEnded, sid)
    assert _data(events) == _message(b"5")
    assert any(isinstance(e, h2.events.StreamReset) for e in client.events)


async def test_ping_settings_and_not_grpc(served: tuple[Path, Handler]) -> None:
    client = await _client(served[0])
    client.h2.ping(b"12345678")
    client.flush()
    sid = client.h2.get_next_available_stream_id()
    client.h2.send_headers(sid, [(":path", "/t/Echo"), (":method", "POST"), (":scheme", "http"),
                                 (":authority", "crib"), ("content-type", "text/plain")],
                           end_stream=True)
    client.flush()
    events = await client.until(h2.events.StreamEnded, sid)
    assert _trailers(events)[":status"] == "415"
    assert any(isinstance(e, h2.events.PingAckReceived) and e.ping_data == b"12345678"
               for e in client.events)
    assert any(isinstance(e, h2.events.SettingsAcknowledged) for e in client.events)


async def test_bad_preface_ends_the_connection(served: tuple[Path, Handler]) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served[0]))
    writer.write(b"GET / HTTP/1.1\r\nHost: crib\r\n\r\n")
    async with asyncio.timeout(5):
        data = await reader.read()
    # Our SETTINGS and WINDOW_UPDATE, then GOAWAY with PROTOCOL_ERROR, then EOF.
    assert data[-17 + 3] == 7  # GOAWAY frame type
    assert struct.unpack(">I", data[-4:])[0] == 1  # PROTOCOL_ERROR
    writer.close()



async def _raw_frames(reader: asyncio.StreamReader, until_ended: set[int]
                      ) -> list[tuple[int, int, int, bytes]]:
    """Frames (type, flags, stream, payload) read off the wire, h2 bypassed, until every
    stream of `until_ended` has ended. h2 itself cannot read past a GOAWAY: it closes
    the whole connection on one (python-hyper/h2 issue 1181)."""
    frames: list[tuple[int, int, int, bytes]] = []
    async with asyncio.timeout(5):
        while until_ended - {sid for kind, flags, sid, _ in frames if flags & 0x1
                             and kind in (0, 1)}:
            head = await reader.readexactly(9)
            length = int.from_bytes(head[:3], "big")
            payload = await reader.readexactly(length)
            frames.append((head[3], head[4], int.from_bytes(head[5:], "big"), payload))
    return frames


async def test_stop_accepting_sends_a_graceful_goaway(tmp_path: Path) -> None:
    """The first GOAWAY of a graceful shutdown (RFC 9113 section 6.8): NO_ERROR, last
    stream 2^31-1, then the call in flight and one already sent are still answered."""
    handler = Handler()
    server = GrpcServer(handler, max_request=1000)
    path = tmp_path / "cri.sock"
    await server.start(str(path))
    try:
        client = await _client(path)
        slow = client.call("/t/Slow", _message(b""), extra=[("grpc-timeout", "300m")])
        await client.until(h2.events.SettingsAcknowledged, 0)  # the preamble is read
        await asyncio.wait_for(handler.started.wait(), 5)
        server.stop_accepting()
        echo = client.call("/t/Echo", _message(b"still"))  # crossed the GOAWAY
        frames = await _raw_frames(client.reader, {slow, echo})
        goaways = [struct.unpack(">II", p) for kind, _, _, p in frames if kind == 7]
        assert goaways == [(2**31 - 1, 0)]
        assert frames[0][0] == 7  # told before anything else
        assert b"".join(p for kind, _, sid, p in frames
                        if kind == 0 and sid == echo) == _message(b"still")
        trailers = [p for kind, flags, sid, p in frames if kind == 1 and sid == slow]
        assert trailers and b"grpc-status" in trailers[-1]
    finally:
        server.close()
        await server.wait_closed()
