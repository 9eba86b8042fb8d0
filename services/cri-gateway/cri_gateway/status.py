"""`Status`: RuntimeReady and NetworkReady from the daemons' health, answered locally.

The gateway stays up when a daemon is down, so the kubelet hears *why* the node is not
ready (a condition with a reason) instead of a transport error, as containerd's
`status.go` reports a CNI problem as NetworkReady=false.

The request and answer are read and written here directly (`status_request_verbose`,
`status_response`), with api.proto's field numbers: the gateway loads no generated CRI
types for one small message each way (see `routes`). `tests/unit/gateway/test_status.py`
compares the bytes with the generated types'.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from crib_common.client import DaemonClient
from crib_common.errors import CribError
from crib_common.errors import InvalidArgument
from crib_common.protowire import field, varint as _varint

RUNTIME_READY = "RuntimeReady"
NETWORK_READY = "NetworkReady"


async def _health(client: DaemonClient, timeout: float) -> tuple[bool, str, str, dict[str, Any]]:
    try:
        body = await client.health(timeout=timeout)
    except CribError as exc:
        return False, f"{client.name.capitalize()}Unavailable", exc.message, {}
    ready = bool(body.get("ready"))
    return ready, str(body.get("reason") or ""), str(body.get("message") or ""), body


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------- wire (api.proto)


def _string(number: int, value: str) -> bytes:
    return field(number, value.encode("utf-8")) if value else b""  # proto3: "" unwritten


def _bool(number: int, value: bool) -> bytes:
    return _varint(number << 3) + b"\x01" if value else b""


def status_request_verbose(raw: bytes) -> bool:
    """`StatusRequest.verbose` (`bool verbose = 1`); InvalidArgument for bytes that are
    not a well-formed StatusRequest. Unknown fields are skipped, as protobuf requires."""
    pos, end, verbose = 0, len(raw), False

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            if pos >= end or shift >= 70:
                raise InvalidArgument("malformed StatusRequest: truncated or overlong varint")
            byte = raw[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7

    while pos < end:
        key = varint()
        number, wire = key >> 3, key & 7
        if number == 0:
            raise InvalidArgument("malformed StatusRequest: field number 0")
        if number == 1 and wire != 0:
            raise InvalidArgument(f"malformed StatusRequest: verbose has wire type {wire}")
        if wire == 0:
            value = varint()
            if number == 1:
                verbose = value != 0
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size = varint()
            pos += size
        else:
            raise InvalidArgument(f"malformed StatusRequest: invalid wire type {wire}")
        if pos > end:
            raise InvalidArgument(f"malformed StatusRequest: field {number} runs past the end")
    return verbose


def status_response(conditions: list[tuple[str, bool, str, str]],
                    handlers: list[tuple[str, bool, bool]], info: dict[str, str]) -> bytes:
    """StatusResponse: `RuntimeStatus status = 1` (conditions: type, status, reason,
    message), `map<string, string> info = 2`, `repeated RuntimeHandler
    runtime_handlers = 3` (name; features: recursive_read_only_mounts, user_namespaces),
    `RuntimeFeatures features = 4` (supplemental_groups_policy: strict supplemental
    groups, and ContainerStatus.user, are supported)."""
    status = b"".join(
        field(1, _string(1, kind) + _bool(2, ok) + _string(3, reason) + _string(4, msg))
        for kind, ok, reason, msg in conditions)
    out = [field(1, status) if status else b""]
    for key, value in info.items():
        out.append(field(2, _string(1, key) + _string(2, value)))
    for name, rro, userns in handlers:
        # Features always written, even all false, as the generated types wrote them: a
        # client can tell "no features" from "not reported" (proto3 message presence).
        features = field(2, _bool(1, rro) + _bool(2, userns))
        out.append(field(3, _string(1, name) + features))
    out.append(field(4, _bool(1, True)))
    return b"".join(out)


def _handlers(body: dict[str, Any]) -> list[tuple[str, bool, bool]]:
    """The handlers runtimed can use, with their features (the kubelet publishes them as
    the node's runtimeHandlers and admits recursive read-only mounts by them); the
    default one first under the empty name too (api.proto: "An empty string denotes the
    default handler"). Each: (name, recursive_read_only_mounts, user_namespaces)."""
    details = _dict(body.get("details"))
    out: list[tuple[str, bool, bool]] = []
    for name, info in sorted(_dict(details.get("handlers")).items()):
        if not isinstance(info, dict) or not info.get("usable"):
            continue
        feats = _dict(info.get("features"))
        rro = bool(feats.get("recursive_read_only_mounts"))
        userns = bool(feats.get("user_namespaces"))
        if info.get("default"):
            out.insert(0, ("", rro, userns))
        out.append((name, rro, userns))
    return out


def verbose_info(runtimed: dict[str, Any], netd: dict[str, Any],
                 imaged: dict[str, Any]) -> dict[str, str]:
    """The verbose `info` map: each daemon's health, and, as containerd's, the runtime's
    config under "config", whose stateDir the conformance suite ID-maps before its user
    namespace specs."""
    info = {"runtimed": json.dumps(runtimed), "netd": json.dumps(netd),
            "imaged": json.dumps(imaged)}
    state_dir = _dict(runtimed.get("details")).get("state_dir")
    if isinstance(state_dir, str) and state_dir:
        info["config"] = json.dumps({"stateDir": state_dir})
    return info


def make_status_handler(runtimed: DaemonClient, netd: DaemonClient, imaged: DaemonClient):  # type: ignore[no-untyped-def]
    async def status(raw: bytes, timeout: float | None) -> bytes:
        verbose = status_request_verbose(raw)
        budget = min(timeout or 2.0, 2.0)
        (r_ok, r_reason, r_msg, r_body), (n_ok, n_reason, n_msg, n_body), (i_ok, i_reason, i_msg, i_body) = (
            await asyncio.gather(
                _health(runtimed, budget), _health(netd, budget), _health(imaged, budget)
            )
        )
        if r_ok and not i_ok:
            # Without imaged no container can be created: the runtime is not ready.
            r_ok, r_reason, r_msg = False, i_reason or "ImagedNotReady", i_msg
        conditions = [
            (RUNTIME_READY, r_ok, "" if r_ok else r_reason, "" if r_ok else r_msg),
            (NETWORK_READY, n_ok, "" if n_ok else n_reason, "" if n_ok else n_msg),
        ]
        info = verbose_info(r_body, n_body, i_body) if verbose else {}
        return status_response(conditions, _handlers(r_body), info)

    return status
