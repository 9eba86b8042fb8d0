"""SPDY/3 header blocks (draft-mbelshe-httpbis-spdy-00, section 2.6.10): the
uncompressed name/value format, and the zlib contexts with the SPDY/3 dictionary, one per
direction for the whole connection, each block ended by a sync flush."""

from __future__ import annotations

import struct
import zlib

__all__ = ["SPDY_DICTIONARY", "HeaderCompressor", "HeaderDecompressor", "Headers",
           "SpdyError", "decode_headers", "encode_headers", "header"]


def _dictionary() -> bytes:
    """The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00 2.6.10.1).

    It is a list of length-prefixed header words followed by a literal tail; both sides must
    use it byte for byte or the peer's inflate fails.
    """
    words = (
        "options head post put delete trace accept accept-charset accept-encoding "
        "accept-language accept-ranges age allow authorization cache-control connection "
        "content-base content-encoding content-language content-length content-location "
        "content-md5 content-range content-type date etag expect expires from host if-match "
        "if-modified-since if-none-match if-range if-unmodified-since last-modified location "
        "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after "
        "server te trailer transfer-encoding upgrade user-agent vary via warning "
        "www-authenticate method get status"
    ).split() + ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive",
                 "origin"]
    head = b"".join(struct.pack(">I", len(w)) + w.encode() for w in words)
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417"
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct "
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8"
        "charset=iso-8859-1,utf-,*,enq=0."
    )
    return head + tail.encode()


SPDY_DICTIONARY = _dictionary()
assert len(SPDY_DICTIONARY) == 1423, "SPDY/3 dictionary is 1423 bytes"

Headers = dict[str, list[str]]


class SpdyError(Exception):
    """The peer broke the SPDY protocol (or the connection is gone)."""


class HeaderCompressor:
    """One direction's zlib context: every header block of a connection shares it."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8,
                                   zlib.Z_DEFAULT_STRATEGY, SPDY_DICTIONARY)

    def compress(self, headers: Headers) -> bytes:
        return self._z.compress(encode_headers(headers)) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    def __init__(self) -> None:
        self._z = zlib.decompressobj(15, zdict=SPDY_DICTIONARY)

    def decompress(self, block: bytes) -> Headers:
        try:
            raw = self._z.decompress(block)
        except zlib.error as e:
            raise SpdyError(f"bad header block: {e}") from e
        return decode_headers(raw)


def encode_headers(headers: Headers) -> bytes:
    """Serialise a header block (uncompressed form): count, then length-prefixed pairs;
    several values of one name are joined with NUL (section 2.6.10)."""
    out = [struct.pack(">I", len(headers))]
    for name, values in headers.items():
        n = name.lower().encode()
        v = b"\0".join(x.encode() for x in values)
        out.append(struct.pack(">I", len(n)) + n + struct.pack(">I", len(v)) + v)
    return b"".join(out)


def decode_headers(raw: bytes) -> Headers:
    """Parse an uncompressed header block into lowercase names -> values."""
    try:
        (count,) = struct.unpack_from(">I", raw, 0)
        pos = 4
        headers: Headers = {}
        for _ in range(count):
            (nlen,) = struct.unpack_from(">I", raw, pos)
            name = raw[pos + 4:pos + 4 + nlen].decode().lower()
            pos += 4 + nlen
            (vlen,) = struct.unpack_from(">I", raw, pos)
            value = raw[pos + 4:pos + 4 + vlen]
            pos += 4 + vlen
            if len(value) != vlen:
                raise SpdyError("truncated header block")
            headers.setdefault(name, []).extend(v.decode() for v in value.split(b"\0"))
        return headers
    except (struct.error, UnicodeDecodeError) as e:
        raise SpdyError(f"bad header block: {e}") from e


def header(headers: Headers, name: str) -> str:
    """First value of a header, or "" (names are case-insensitive)."""
    values = headers.get(name.lower())
    return values[0] if values else ""
