"""Wire compatibility of crib's betterproto CRI types with the independent grpcio stubs.

For every request and response message of RuntimeService and ImageService (enumerated from
the generated `RuntimeServiceBase().__mapping__()` / `ImageServiceBase().__mapping__()`),
a message with a non-default value in every field, recursively (strings, integers of each
wire type, bools, enums, repeated, maps, nested messages, one member of each oneof), is

1. encoded by betterproto and decoded by `cri_api.v1.api_pb2` (PyPI
   `container-runtime-interface-api`): every field the stubs know must read back the same
   value under the same field number, and nothing the stubs know may land in their
   unknown-field set (which is where a wrong number or wire type ends up);
2. re-encoded by the stubs (their unknown fields dropped) and decoded by betterproto: the
   common fields must read back the same again, and the fields the stubs do not know must
   be at their defaults.

Comparison is by field number, on a canonical form built from each side's own descriptor,
not by bytes: the two encoders order fields and map entries differently, and both are
valid protobuf.

The vendored api.proto is newer than the PyPI package: messages the stubs lack are skipped
with the reason, and fields the stubs lack are compared on the common fields only (an old
kubelet never sends them and ignores them in answers, which is how protobuf evolves). Both
lists are printed by `test_report_version_skew` so a package upgrade shows what changed.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import math
import typing
from typing import Any

import betterproto
import pytest

from crib_common.cri.runtime.v1 import ImageServiceBase, RuntimeServiceBase

api_pb2 = pytest.importorskip("cri_api.v1.api_pb2")

MAX_DEPTH = 8

_INTS: dict[str, tuple[int, ...]] = {
    # Values that use every byte a varint/fixed field can hold, and negatives where the
    # type is signed (int32 negatives are 10-byte varints on the wire).
    "int32": (-123456, 2**31 - 1),
    "sint32": (-654321, -(2**31)),
    "sfixed32": (-7777, 2**31 - 2),
    "uint32": (4000000000, 77),
    "fixed32": (3000000000, 55),
    "int64": (-(2**40) - 3, 2**62 + 5),
    "sint64": (-(2**50) - 1, 2**61),
    "sfixed64": (-(2**45), 2**60 + 9),
    "uint64": (2**63 + 11, 99),
    "fixed64": (2**63 + 17, 101),
}


def service_message_types() -> tuple[list[type[betterproto.Message]], list[str]]:
    """Every request and response type of the two services, in a stable order."""
    seen: dict[str, type[betterproto.Message]] = {}
    rpcs: list[str] = []
    for base in (RuntimeServiceBase(), ImageServiceBase()):
        for path, handler in sorted(base.__mapping__().items()):
            rpcs.append(path)
            for cls in (handler.request_type, handler.reply_type):
                seen.setdefault(cls.__name__, cls)
    return list(seen.values()), rpcs


MESSAGE_TYPES, RPC_PATHS = service_message_types()
STUB_MESSAGES = api_pb2.DESCRIPTOR.message_types_by_name


class _Filler:
    """Builds betterproto messages with a distinct non-default value in every field."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def message(self, cls: type[betterproto.Message], depth: int = 0) -> betterproto.Message:
        msg = cls()
        if depth > MAX_DEPTH:
            return msg
        meta = cls._betterproto
        groups_done: set[str] = set()
        for field in dataclasses.fields(cls):
            fm = meta.meta_by_field_name[field.name]
            if fm.group is not None:
                # One member per oneof: setting several would keep only the last.
                if fm.group in groups_done:
                    continue
                groups_done.add(fm.group)
            setattr(msg, field.name, self.field(cls, field.name, fm, depth))
        return msg

    def field(self, cls: type[betterproto.Message], name: str,
              fm: betterproto.FieldMetadata, depth: int) -> Any:
        if fm.proto_type == betterproto.TYPE_MAP:
            key_type, value_type = fm.map_types
            value_cls = cls._betterproto.cls_by_field.get(f"{name}.value")
            return {
                self.scalar(key_type, None, key=True):
                    self.single(value_type, value_cls, depth + 1)
                for _ in range(2)
            }
        hint = cls._type_hint(name)
        repeated = typing.get_origin(hint) in (list, typing.List)  # noqa: UP006
        item_cls = cls._betterproto.cls_by_field.get(name)
        if fm.wraps:
            return self.scalar(fm.wraps, None)
        if repeated:
            return [self.single(fm.proto_type, item_cls, depth + 1) for _ in range(2)]
        return self.single(fm.proto_type, item_cls, depth + 1)

    def single(self, proto_type: str, cls: Any, depth: int) -> Any:
        if proto_type == betterproto.TYPE_MESSAGE:
            return self.message(cls, depth)
        return self.scalar(proto_type, cls)

    def scalar(self, proto_type: str, cls: Any, *, key: bool = False) -> Any:
        n = next(self._counter)
        if proto_type == betterproto.TYPE_STRING:
            return f"crib-{n}-é"  # non-ASCII: UTF-8 on the wire
        if proto_type == betterproto.TYPE_BYTES:
            # Valid UTF-8 on purpose: our api.proto has `bytes` where the PyPI stubs still
            # have `string` (KeyValue.value), and only UTF-8 is common to both.
            return f"crib-bytes-{n}-é".encode()
        if proto_type == betterproto.TYPE_BOOL:
            return True
        if proto_type == betterproto.TYPE_ENUM:
            members = [m for m in cls if m.value != 0]
            return members[n % len(members)] if members else list(cls)[0]
        if proto_type == betterproto.TYPE_DOUBLE:
            return 1.5 + n
        if proto_type == betterproto.TYPE_FLOAT:
            return 0.25 + n  # exactly representable in float32
        values = _INTS[proto_type]
        return values[n % len(values)] + (0 if key else 0)


# ------------------------------------------------------------------ canonical forms


def _canon_stub(msg: Any) -> dict[int, Any]:
    """{field number: value} of a grpcio message, only fields that are set/non-empty."""
    out: dict[int, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        value = getattr(msg, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            vfd = fd.message_type.fields_by_name["value"]
            if value:
                out[fd.number] = {
                    k: _canon_stub_value(vfd, v) for k, v in value.items()
                }
        elif _is_repeated(fd):
            if len(value):
                out[fd.number] = [_canon_stub_value(fd, v) for v in value]
        elif fd.message_type is not None:
            if msg.HasField(fd.name):
                out[fd.number] = _canon_stub(value)
        elif value != fd.default_value or (
            fd.containing_oneof is not None and msg.WhichOneof(fd.containing_oneof.name)
            == fd.name
        ):
            out[fd.number] = _canon_stub_value(fd, value)
    return out


def _is_repeated(fd: Any) -> bool:
    # protobuf >= 5 has `is_repeated`; older versions only `label`.
    if hasattr(fd, "is_repeated"):
        return bool(fd.is_repeated)
    return bool(fd.label == fd.LABEL_REPEATED)


def _canon_stub_value(fd: Any, value: Any) -> Any:
    if fd.message_type is not None:
        return _canon_stub(value)
    return _norm(value)


def _canon_ours(msg: betterproto.Message, numbers: set[int] | None = None) -> dict[int, Any]:
    """{field number: value} of a betterproto message, only set/non-default fields."""
    cls = type(msg)
    meta = cls._betterproto
    out: dict[int, Any] = {}
    for field in dataclasses.fields(cls):
        fm = meta.meta_by_field_name[field.name]
        if numbers is not None and fm.number not in numbers:
            continue
        value = getattr(msg, field.name)
        if fm.group is not None:
            selected, _ = betterproto.which_one_of(msg, fm.group)
            if selected != field.name:
                continue
            out[fm.number] = _canon_ours_value(value)
            continue
        if fm.proto_type == betterproto.TYPE_MAP:
            if value:
                out[fm.number] = {k: _canon_ours_value(v) for k, v in value.items()}
        elif isinstance(value, list):
            if value:
                out[fm.number] = [_canon_ours_value(v) for v in value]
        elif isinstance(value, betterproto.Message):
            if betterproto.serialized_on_wire(value):
                out[fm.number] = _canon_ours(value)
        elif value != meta.default_gen[field.name]():
            out[fm.number] = _canon_ours_value(value)
    return out


def _canon_ours_value(value: Any) -> Any:
    if isinstance(value, betterproto.Message):
        return _canon_ours(value)
    return _norm(value)


def _norm(value: Any) -> Any:
    if isinstance(value, str):
        # str and bytes compare as their UTF-8 bytes (see the bytes/string skew above).
        return value.encode()
    if isinstance(value, enum.Enum):
        return int(value.value)
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else value
    return value


def _restrict(ours: dict[int, Any], stub_cls: Any, ours_cls: type[betterproto.Message]
              ) -> dict[int, Any]:
    """Our canonical form cut down to the fields the stub's descriptor knows, recursively."""
    known = {fd.number: fd for fd in stub_cls.DESCRIPTOR.fields}
    out: dict[int, Any] = {}
    meta = ours_cls._betterproto
    for number, value in ours.items():
        fd = known.get(number)
        if fd is None:
            continue
        name = meta.field_name_by_number[number]
        sub_cls = meta.cls_by_field.get(name)
        fm = meta.meta_by_field_name[name]
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            vfd = fd.message_type.fields_by_name["value"]
            if vfd.message_type is not None:
                vcls = meta.cls_by_field[f"{name}.value"]
                stub_v = getattr(api_pb2, vfd.message_type.name)
                value = {k: _restrict(v, stub_v, vcls) for k, v in value.items()}
        elif fd.message_type is not None and fm.proto_type == betterproto.TYPE_MESSAGE:
            stub_sub = getattr(api_pb2, fd.message_type.name)
            if isinstance(value, list):
                value = [_restrict(v, stub_sub, sub_cls) for v in value]
            else:
                value = _restrict(value, stub_sub, sub_cls)
        out[number] = value
    return out


def _unknown_fields(msg: Any) -> list[tuple[str, int]]:
    """(message name, field number) the stub put in an unknown-field set, anywhere below."""
    from google.protobuf.unknown_fields import UnknownFieldSet

    found = [(msg.DESCRIPTOR.name, f.field_number) for f in UnknownFieldSet(msg)]
    for fd in msg.DESCRIPTOR.fields:
        if fd.message_type is None:
            continue
        value = getattr(msg, fd.name)
        if fd.message_type.GetOptions().map_entry:
            if fd.message_type.fields_by_name["value"].message_type is not None:
                for v in value.values():
                    found += _unknown_fields(v)
        elif _is_repeated(fd):
            for v in value:
                found += _unknown_fields(v)
        elif msg.HasField(fd.name):
            found += _unknown_fields(value)
    return found


# ------------------------------------------------------------------ version skew


def _newer_fields(cls: type[betterproto.Message], stub_desc: Any, prefix: str = "",
                  seen: set[str] | None = None) -> list[str]:
    """Our fields (dotted paths) the stubs do not know, recursively through messages."""
    seen = set() if seen is None else seen
    if cls.__name__ in seen:
        return []
    seen.add(cls.__name__)
    known = {fd.number: fd for fd in stub_desc.fields}
    meta = cls._betterproto
    out: list[str] = []
    for field in dataclasses.fields(cls):
        fm = meta.meta_by_field_name[field.name]
        fd = known.get(fm.number)
        path = f"{prefix}{cls.__name__}.{field.name}"
        if fd is None:
            out.append(path)
            continue
        if fm.proto_type == betterproto.TYPE_MESSAGE and fd.message_type is not None:
            sub = meta.cls_by_field[field.name]
            out += _newer_fields(sub, fd.message_type, "", seen)
        elif fm.proto_type in _STUB_TYPE and fd.type != _STUB_TYPE[fm.proto_type]:
            TYPE_CHANGES.add(f"{path}: ours {fm.proto_type}, stubs type {fd.type}")
    return out


# FieldDescriptor.TYPE_* numbers of the scalar types that could change between versions.
_STUB_TYPE = {"bytes": 12, "string": 9}
TYPE_CHANGES: set[str] = set()


def _skew() -> tuple[dict[str, str], dict[str, list[str]]]:
    skipped: dict[str, str] = {}
    newer: dict[str, list[str]] = {}
    for cls in MESSAGE_TYPES:
        if cls.__name__ not in STUB_MESSAGES:
            skipped[cls.__name__] = (
                "not in cri_api.v1.api_pb2 (added to api.proto after the PyPI package)"
            )
            continue
        fields = _newer_fields(cls, STUB_MESSAGES[cls.__name__])
        if fields:
            newer[cls.__name__] = fields
    return skipped, newer


SKIPPED, NEWER_FIELDS = _skew()


# ------------------------------------------------------------------ tests


def test_every_rpc_enumerated() -> None:
    # The CRI v1 surface: a generator change that lost RPCs would silently shrink the test.
    assert len(RPC_PATHS) >= 30
    assert "/runtime.v1.RuntimeService/RunPodSandbox" in RPC_PATHS
    assert "/runtime.v1.ImageService/PullImage" in RPC_PATHS
    assert len(MESSAGE_TYPES) >= 60


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
def test_wire_compat(cls: type[betterproto.Message]) -> None:
    if cls.__name__ in SKIPPED:
        pytest.skip(f"{cls.__name__}: {SKIPPED[cls.__name__]}")
    stub_cls = getattr(api_pb2, cls.__name__)
    ours = _Filler().message(cls)
    full = _canon_ours(ours)
    if dataclasses.fields(cls):
        assert full, f"{cls.__name__}: the filler left every field at its default"

    # 1. betterproto -> grpcio stubs.
    wire = bytes(ours)
    theirs = stub_cls.FromString(wire)
    expected = _restrict(full, stub_cls, cls)
    assert _canon_stub(theirs) == expected
    # A field the stubs know but read as unknown has a wrong number or wire type. Fields
    # only our newer proto has are expected there.
    unknown = set(_unknown_fields(theirs))
    newer = _newer_field_keys()
    assert unknown <= newer, (
        f"{cls.__name__}: stubs did not understand field(s) {sorted(unknown - newer)}"
    )

    # 2. grpcio stubs -> betterproto (the stubs' unknown fields dropped first).
    theirs.DiscardUnknownFields()
    back = cls().parse(theirs.SerializeToString(deterministic=True))
    back_canon = _canon_ours(back)
    assert _restrict(back_canon, stub_cls, cls) == expected
    # Whatever the stubs could not carry comes back as the default, never garbage.
    assert back_canon == expected


def _newer_field_keys() -> set[tuple[str, int]]:
    """(message name, field number) of every field our proto has and the stubs lack."""
    keys: set[tuple[str, int]] = set()
    by_name = {c.__name__: c for c in _all_classes()}
    for path in itertools.chain.from_iterable(NEWER_FIELDS.values()):
        owner, _, name = path.rpartition(".")
        owner_cls = by_name.get(owner)
        if owner_cls is not None and name in owner_cls._betterproto.meta_by_field_name:
            keys.add((owner, owner_cls._betterproto.meta_by_field_name[name].number))
    return keys


def _all_classes() -> list[type[betterproto.Message]]:
    import crib_common.cri.runtime.v1 as generated

    return [v for v in vars(generated).values()
            if isinstance(v, type) and issubclass(v, betterproto.Message)]


def test_report_version_skew(capsys: pytest.CaptureFixture[str]) -> None:
    """Print what the comparison had to leave out, so an upgrade shows what changed."""
    with capsys.disabled():
        print(f"\nwire compat: {len(MESSAGE_TYPES)} message types of {len(RPC_PATHS)} RPCs; "
              f"{len(SKIPPED)} skipped (not in the PyPI stubs): {', '.join(sorted(SKIPPED))}")
        for name, fields in sorted(NEWER_FIELDS.items()):
            print(f"  {name}: compared without {', '.join(fields)}")
        for change in sorted(TYPE_CHANGES):
            print(f"  type differs (compared on valid UTF-8): {change}")
    # Skipping must stay the exception: most of the surface is compared.
    assert len(SKIPPED) < len(MESSAGE_TYPES) // 3
