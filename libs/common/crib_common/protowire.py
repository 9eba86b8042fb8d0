"""The protobuf wire format's two primitives, with no dependency: base-128 varints and
length-delimited fields (protobuf encoding guide). The gateway frames replies with them
without loading the generated CRI types; `wire` and the list caches use the same ones."""

from __future__ import annotations

__all__ = ["field", "varint"]

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
