"""crib_common.wire: the checks and the fast codec agree with betterproto."""

from __future__ import annotations

from typing import Any

import betterproto
import pytest

from crib_common.cri.runtime.v1 import (
    ExecSyncRequest,
    ImageServiceBase,
    LinuxContainerSecurityContext,
    ListContainersRequest,
    RunPodSandboxRequest,
    RuntimeServiceBase,
    StopContainerRequest,
    VersionRequest,
)
from crib_common.errors import InvalidArgument
from crib_common.wire import check_wire
from tests.conformance.test_wire_compat import _Filler


def _all_service_messages() -> list[type[betterproto.Message]]:
    seen: dict[str, type[betterproto.Message]] = {}
    for base in (RuntimeServiceBase(), ImageServiceBase()):
        for handler in base.__mapping__().values():
            for cls in (handler.request_type, handler.reply_type):
                seen.setdefault(cls.__name__, cls)
    return list(seen.values())


@pytest.mark.parametrize("cls", _all_service_messages(), ids=lambda c: c.__name__)
def test_check_wire_accepts_every_well_formed_message(cls: type[betterproto.Message]) -> None:
    check_wire(bytes(_Filler().message(cls)), cls)
    check_wire(b"", cls)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"\xff\xff\xff", "truncated varint"),
        (b"\x0a\x10abc", "runs past the end"),
        (b"\x0f", "invalid wire type"),
        (b"\x00\x01", "field number 0"),
        (b"\x0a\x02\xc3\x28", "not valid UTF-8"),
        (b"\x08\x01", "wire type 0, expected 2"),  # version is a string, sent as varint
        (b"\xff" * 11, "longer than 10 bytes"),
    ],
)
def test_check_wire_rejects_malformed_bytes(raw: bytes, needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        check_wire(raw, VersionRequest)


def test_check_wire_takes_packed_only_for_repeated_scalars() -> None:
    # StopContainerRequest.timeout is one int64: length-delimited bytes there are no
    # packed list but garbage (found by fuzzing: the handler got a list for a number).
    with pytest.raises(InvalidArgument, match=r"timeout: wire type 2, expected 0"):
        check_wire(b"\x12\x03abc", StopContainerRequest)
    with pytest.raises(InvalidArgument, match=r"timeout: wire type 2, expected 0"):
        check_wire(b"\x1a\x02\x0a\x00", ExecSyncRequest)
    # supplemental_groups is `repeated int64`: packed is its normal form.
    ctx = LinuxContainerSecurityContext(supplemental_groups=[1, 2, 300])
    raw = bytes(ctx)
    assert b"\x42" in raw  # field 8, wire type 2: packed
    check_wire(raw, LinuxContainerSecurityContext)


def test_check_wire_skips_unknown_fields() -> None:
    # Field 15 is unknown to VersionRequest: a newer kubelet's addition must pass.
    check_wire(bytes(VersionRequest(version="v1")) + b"\x7a\x03abc", VersionRequest)


def test_check_wire_names_the_bad_enum_field() -> None:
    good = RunPodSandboxRequest().from_dict({"config": {"linux": {"securityContext": {
        "namespaceOptions": {"network": "NODE"}}}}})
    raw = bytearray(bytes(good))
    assert raw[-1] == 2  # NamespaceMode.NODE, the last byte
    raw[-1] = 77
    with pytest.raises(InvalidArgument,
                       match=r"config\.linux\.security_context\.namespace_options\.network: 77"):
        check_wire(bytes(raw), RunPodSandboxRequest)
    # Packed repeated enums are checked too (ListContainers has none; this one is plain).
    check_wire(bytes(ListContainersRequest()), ListContainersRequest)


# ------------------------------------------------------------------ encode_message


class _RandomFiller(_Filler):
    """Sets a random subset of fields: values, explicit defaults, empty sub-messages."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        import random

        self.rng = random.Random(seed)

    def message(self, cls: type[betterproto.Message], depth: int = 0) -> betterproto.Message:
        import dataclasses

        msg = cls()
        if depth > 4:
            return msg
        meta = cls._betterproto
        for field in dataclasses.fields(cls):
            fm = meta.meta_by_field_name[field.name]
            roll = self.rng.random()
            if roll < 0.35:
                continue  # never set
            if roll < 0.5:
                # Explicitly the default: "" / 0 / False / [] / {} / an empty message.
                setattr(msg, field.name, meta.default_gen[field.name]())
                continue
            if roll < 0.6 and fm.proto_type == betterproto.TYPE_MESSAGE:
                # Reached through the lazy default, then mutated in place.
                sub = getattr(msg, field.name)
                if isinstance(sub, betterproto.Message):
                    filled = self.message(type(sub), depth + 1)
                    for f in dataclasses.fields(type(sub)):
                        raw = filled.__dict__.get(f.name)
                        if raw is not None and raw is not betterproto.PLACEHOLDER \
                                and self.rng.random() < 0.5:
                            setattr(sub, f.name, raw)
                    continue
            setattr(msg, field.name, self.field(cls, field.name, fm, depth))
        return msg


@pytest.mark.parametrize("cls", _all_service_messages(), ids=lambda c: c.__name__)
def test_encode_message_matches_betterproto_byte_for_byte(
    cls: type[betterproto.Message],
) -> None:
    from crib_common.wire import encode_message

    samples = [cls(), _Filler().message(cls)]
    samples += [_RandomFiller(seed).message(cls) for seed in range(25)]
    for msg in samples:
        assert encode_message(msg) == bytes(msg)
    # Parsed messages (serialized_on_wire set everywhere, unknown fields kept).
    parsed = cls().parse(bytes(samples[1]) + b"\xfa\x3e\x03abc")  # field 999, bytes
    assert encode_message(parsed) == bytes(parsed)


def test_encode_message_edge_values() -> None:
    from crib_common.cri.runtime.v1 import (
        ContainerStatus,
        ContainerStatusResponse,
        Int64Value,
        LinuxContainerResources,
        PortMapping,
        Protocol,
    )
    from crib_common.wire import encode_message

    cases = [
        LinuxContainerResources(cpu_period=-1, cpu_quota=2**62, memory_limit_in_bytes=-(2**40)),
        PortMapping(protocol=Protocol.SCTP, container_port=-5, host_port=2**31 - 1),
        ContainerStatusResponse(status=ContainerStatus()),  # explicitly empty: sent as such
        ContainerStatusResponse(info={"": ""}),
        ContainerStatusResponse(info={"k": "é" * 300}),
        Int64Value(value=-1),
    ]
    lazy = ContainerStatusResponse()
    lazy.status.metadata.name = ""  # mutated through lazy defaults, still all default
    cases.append(lazy)
    lazy2 = ContainerStatusResponse()
    lazy2.status.labels["a"] = "b"
    cases.append(lazy2)
    for msg in cases:
        assert encode_message(msg) == bytes(msg), msg


# ------------------------------------------------------------------ decode_message


def _state(value: Any) -> Any:
    """Everything a betterproto object holds, PLACEHOLDERs and flags included."""
    if isinstance(value, betterproto.Message):
        d = object.__getattribute__(value, "__dict__")
        return (type(value).__name__, {k: _state(v) for k, v in d.items()})
    if isinstance(value, list):
        return [_state(v) for v in value]
    if isinstance(value, dict):
        return {k: _state(v) for k, v in value.items()}
    if value is betterproto.PLACEHOLDER:
        return "<PLACEHOLDER>"
    return (type(value).__name__, value)


@pytest.mark.parametrize("cls", _all_service_messages(), ids=lambda c: c.__name__)
def test_decode_message_builds_what_betterproto_builds(cls: type[betterproto.Message]) -> None:
    from crib_common.wire import decode_message

    samples = [cls(), _Filler().message(cls)]
    samples += [_RandomFiller(seed).message(cls) for seed in range(20)]
    wires = [bytes(m) for m in samples]
    # Concatenations: fields repeated on the wire, oneof members switching, packed chunks
    # following each other, and an unknown field (999).
    wires += [wires[i] + wires[i + 1] for i in range(0, len(wires) - 1, 2)]
    wires += [w + b"\xfa\x3e\x03abc" for w in wires[:4]]
    for raw in wires:
        assert _state(decode_message(cls, raw)) == _state(cls().parse(raw))


def test_decode_message_falls_back_on_odd_wire_data() -> None:
    from crib_common.wire import decode_message

    # `version` (a string) sent as a varint: betterproto's own parser decides.
    raw = b"\x08\x01"
    assert _state(decode_message(VersionRequest, raw)) == _state(VersionRequest().parse(raw))
