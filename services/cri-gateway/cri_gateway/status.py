"""`Status`: RuntimeReady and NetworkReady from the daemons' health, answered locally.

The gateway stays up when a daemon is down, so the kubelet hears *why* the node is not
ready (a condition with a reason) instead of a transport error, as containerd's
`status.go` reports a CNI problem as NetworkReady=false.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from crib_common.client import DaemonClient
from crib_common.cri.runtime.v1 import (
    RuntimeCondition,
    RuntimeFeatures,
    RuntimeHandler,
    RuntimeHandlerFeatures,
    RuntimeStatus,
    StatusRequest,
    StatusResponse,
)
from crib_common.errors import CribError
from crib_common.errors import InvalidArgument
from crib_common.wire import check_wire, decode_message, encode_message

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


def _handlers(body: dict[str, Any]) -> list[RuntimeHandler]:
    """The handlers runtimed can use, with their features (the kubelet publishes them as
    the node's runtimeHandlers and admits recursive read-only mounts by them); the
    default one first under the empty name too (api.proto: "An empty string denotes the
    default handler")."""
    details = _dict(body.get("details"))
    out: list[RuntimeHandler] = []
    for name, info in sorted(_dict(details.get("handlers")).items()):
        if not isinstance(info, dict) or not info.get("usable"):
            continue
        feats = _dict(info.get("features"))
        features = RuntimeHandlerFeatures(
            recursive_read_only_mounts=bool(feats.get("recursive_read_only_mounts")),
            user_namespaces=bool(feats.get("user_namespaces")))
        if info.get("default"):
            out.insert(0, RuntimeHandler(name="", features=features))
        out.append(RuntimeHandler(name=name, features=features))
    return out


def make_status_handler(runtimed: DaemonClient, netd: DaemonClient, imaged: DaemonClient):  # type: ignore[no-untyped-def]
    async def status(raw: bytes, timeout: float | None) -> bytes:
        check_wire(raw, StatusRequest)  # betterproto alone accepts garbage
        try:
            request = decode_message(StatusRequest, raw)
        except Exception as exc:
            raise InvalidArgument(f"malformed StatusRequest: {exc}") from None
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
            RuntimeCondition(type=RUNTIME_READY, status=r_ok, reason="" if r_ok else r_reason,
                             message="" if r_ok else r_msg),
            RuntimeCondition(type=NETWORK_READY, status=n_ok, reason="" if n_ok else n_reason,
                             message="" if n_ok else n_msg),
        ]
        response = StatusResponse(status=RuntimeStatus(conditions=conditions),
                                  runtime_handlers=_handlers(r_body),
                                  # Strict supplemental groups, and ContainerStatus.user.
                                  features=RuntimeFeatures(supplemental_groups_policy=True))
        if request.verbose:
            response.info = {
                "runtimed": json.dumps(r_body), "netd": json.dumps(n_body),
                "imaged": json.dumps(i_body),
            }
        return encode_message(response)

    return status
