"""List and status replies: pre-encoded items and statuses, caches per generation, pages
for the Stream* RPCs, and the filters the List RPCs share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import betterproto

from crib_common.protowire import varint as _varint
from crib_common.wire import encode_message

from ..store.records import ContainerRecord, SandboxRecord
from .status import container_item, container_status, sandbox_item, sandbox_status

__all__ = ["ListCache", "PAGE_BYTES", "PAGE_ITEMS", "container_entry",
           "container_item_bytes", "container_status_reply", "forget_item", "labels_match",
           "pages", "sandbox_entry", "sandbox_status_reply", "select", "stats_pages",
           "wire_field"]


# List replies are assembled from per-item encodings (betterproto costs ~1 ms to build and
# encode one Container) and handed to the CRI dispatcher as bytes, which it sends as they
# are. Per object id: (state key, the item's encoding, the same framed as field 1 of a list
# reply). Both ListContainersResponse.containers and ListPodSandboxResponse.items are
# `repeated ... = 1`, so the framed form is reused.
_ITEM_CACHE: dict[str, tuple[str, bytes, bytes]] = {}
_FIELD1 = _varint((1 << 3) | 2)


def _cached(
    oid: str, key: str, build: Callable[[], betterproto.Message]
) -> tuple[str, bytes, bytes]:
    hit = _ITEM_CACHE.get(oid)
    if hit is not None and hit[0] == key:
        return hit
    data = encode_message(build())
    entry = (key, data, _FIELD1 + _varint(len(data)) + data)
    _ITEM_CACHE[oid] = entry
    return entry


def container_item_bytes(rec: ContainerRecord) -> bytes:
    """The encoded `Container` of a record, re-encoded only when its state changed."""
    return _cached(rec.meta.id, rec.status.state, lambda: container_item(rec))[1]


def container_entry(rec: ContainerRecord) -> bytes:
    """`container_item_bytes` framed as field 1 (ListContainersResponse.containers)."""
    return _cached(rec.meta.id, rec.status.state, lambda: container_item(rec))[2]


def sandbox_entry(rec: SandboxRecord) -> bytes:
    """The encoded `PodSandbox` framed as field 1 (ListPodSandboxResponse.items)."""
    return _cached(rec.meta.id, "pod:" + rec.status.state, lambda: sandbox_item(rec))[2]


# Status replies, the kubelet's most frequent calls (after every event, and per pod on
# every relist), are built the same way: per object id, (its status record as JSON, the
# encoded ContainerStatus or PodSandboxStatus). Metadata is written once at create; the
# status record holds everything else a status message shows, so its JSON is the key.
# Building and encoding the betterproto messages cost 0.25-0.45 ms per call, the key
# about 10 us. Records still being created are never cached (their metadata is still
# being filled in).
_STATUS_CACHE: dict[str, tuple[str, bytes]] = {}
_FIELD3 = _varint((3 << 3) | 2)
_FIELD4_VARINT = _varint(4 << 3)


def _status_bytes(oid: str, rec: ContainerRecord | SandboxRecord,
                  build: Callable[[], betterproto.Message]) -> bytes:
    if rec.status.state == "creating":
        return encode_message(build())
    key = rec.status.model_dump_json()
    hit = _STATUS_CACHE.get(oid)
    if hit is not None and hit[0] == key:
        return hit[1]
    data = encode_message(build())
    _STATUS_CACHE[oid] = (key, data)
    return data


def container_status_reply(rec: ContainerRecord) -> bytes:
    """A non-verbose ContainerStatusResponse: `ContainerStatus status = 1` only."""
    data = _status_bytes(rec.meta.id, rec, lambda: container_status(rec))
    return _FIELD1 + _varint(len(data)) + data


def sandbox_status_reply(rec: SandboxRecord, containers: Iterable[ContainerRecord],
                         timestamp: int) -> bytes:
    """A non-verbose PodSandboxStatusResponse: `PodSandboxStatus status = 1`,
    `repeated ContainerStatus containers_statuses = 3`, `int64 timestamp = 4`, in field
    order as protobuf encoders write them."""
    data = _status_bytes(rec.meta.id, rec, lambda: sandbox_status(rec))
    out = [_FIELD1, _varint(len(data)), data]
    for c in containers:
        item = _status_bytes(c.meta.id, c, lambda: container_status(c))
        out += [_FIELD3, _varint(len(item)), item]
    if timestamp:
        out += [_FIELD4_VARINT, _varint(timestamp)]
    return b"".join(out)


def forget_item(oid: str) -> None:
    """Drop a removed object's encodings (`Node.on_drop`)."""
    _ITEM_CACHE.pop(oid, None)
    _STATUS_CACHE.pop(oid, None)


_R = TypeVar("_R", ContainerRecord, SandboxRecord)
_S = TypeVar("_S")
_M = TypeVar("_M")

# A page of a Stream* reply (CRIListStreaming, KEP 5825): at most this many items and,
# past the first item, this many bytes, far below the kubelet's 16 MiB receive limit even
# for items with large annotations.
PAGE_ITEMS = 500
PAGE_BYTES = 4 << 20


async def pages(entries: list[bytes], max_items: int = PAGE_ITEMS,
                max_bytes: int = PAGE_BYTES) -> AsyncIterator[bytes]:
    """Framed entries joined into pages of at least one entry each; none for no entries
    (api.proto: "lists of at least one item", then EOF)."""
    page: list[bytes] = []
    size = 0
    for entry in entries:
        if page and (len(page) >= max_items or size + len(entry) > max_bytes):
            yield b"".join(page)
            page, size = [], 0
        page.append(entry)
        size += len(entry)
    if page:
        yield b"".join(page)


async def stats_pages(records: list[_R], alive: Callable[[_R], bool],
                      stats: Callable[[_R], Awaitable[_S]],
                      reply: Callable[[list[_S]], _M]) -> AsyncIterator[_M]:
    """Stats of `records` as `reply` messages of a page (PAGE_ITEMS) each, each page read
    when it is sent, its records at once; a record gone before its page (`alive` false)
    is left out."""
    for start in range(0, len(records), PAGE_ITEMS):
        page = [r for r in records[start:start + PAGE_ITEMS] if alive(r)]
        if page:
            yield reply(list(await asyncio.gather(*(stats(r) for r in page))))


class ListCache:
    """List replies by filter, valid for one `Node.generation` (every record write or
    drop bumps it): a kubelet polling an unchanged node gets the bytes already built."""

    # Distinct filters kept per generation; the kubelet uses a handful.
    MAX_KEYS = 32

    def __init__(self) -> None:
        self.generation = -1
        self.replies: dict[Any, bytes] = {}

    def get(self, generation: int, key: Any) -> bytes | None:
        if generation != self.generation:
            self.generation = generation
            self.replies.clear()
            return None
        return self.replies.get(key)

    def put(self, key: Any, reply: bytes) -> bytes:
        if len(self.replies) < self.MAX_KEYS:
            self.replies[key] = reply
        return reply


def wire_field(msg: Any, name: str) -> Any:
    """`msg.<name>` if that sub-message was on the wire, else None. Reading an unset
    message field through betterproto builds its default (about 100 us for a list
    filter); the raw slot holds betterproto's PLACEHOLDER until then."""
    value = object.__getattribute__(msg, name)
    if value is betterproto.PLACEHOLDER or not betterproto.serialized_on_wire(value):
        return None
    return value


def labels_match(labels: dict[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def select(records: Iterable[_R], id_prefix: str = "",
           selector: Mapping[str, str] | None = None) -> list[_R]:
    """The records a CRI filter keeps: the ID by unique prefix, the labels by selector."""
    out = list(records)
    if id_prefix:
        out = [r for r in out if r.meta.id.startswith(id_prefix)]
    if selector:
        out = [r for r in out if labels_match(r.meta.labels, selector)]
    return out
