"""The protobuf wire format's primitives, with no dependency: base-128 varints (written
and read) and length-delimited fields (protobuf encoding guide). The gateway frames
replies with them without loading the generated CRI types; `wire`, the list caches and
runtimed's NRI (ttrpc) use the same ones."""

from __future__ import annotations

__all__ = ["WireError", "field", "read_varint", "varint"]

_SMALL = [bytes((i,)) for i in range(128)]


def varint(value: int) -> bytes:
    """A varint; a negative number as 64-bit two's complement (10 bytes), as protobuf
    writes an int64."""
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number: int, data: bytes) -> bytes:
    """Field `number` as a length-delimited record (wire type 2), written even empty."""
    return varint((number << 3) | 2) + varint(len(data)) + data


class WireError(ValueError):
    """Bytes that are not the protobuf wire format."""


def read_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it; WireError when it is truncated or
    longer than protobuf's 10 bytes."""
    result = 0
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes")
