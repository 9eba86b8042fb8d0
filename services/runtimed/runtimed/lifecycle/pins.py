"""Whether a pod still holds its pinned IPC and UTS namespaces (`sandbox.namespaces`).

A pin is a bind mount under runtimed's directories; it is gone when someone unmounted it,
or when runtimed came back in another mount namespace and its directories did not
propagate mounts (issue 17: runc then fails with "failed to setns into ipc namespace").
Such a pod cannot take containers: it goes ready -> notready, and creates into it are
FailedPrecondition saying why. Checked where it costs nothing on the hot path: at start
(recovery) and after a create or start failed; PodSandboxStatus and ListPodSandbox read
the record only.
"""

from __future__ import annotations

import structlog

from crib_common.errors import FailedPrecondition

from ..node import Node
from ..store.records import SandboxRecord

__all__ = ["check_pins", "pins_lost_error"]

log = structlog.get_logger("crib.runtimed")


def check_pins(node: Node, rec: SandboxRecord) -> list[str]:
    """The pod's pinned namespaces that are gone; a ready pod missing any is marked
    notready (persisted, with the kinds lost)."""
    pins = {kind: path for kind, path in (("ipc", rec.meta.ipc_ns), ("uts", rec.meta.uts_ns))
            if path}
    lost = node.host.lost_pins(pins) if pins else []
    if lost and rec.status.state == "ready":
        log.warning("sandbox lost its pinned namespaces", pod=rec.meta.id, namespaces=lost)
        rec.status.state = "notready"
        rec.status.lost_namespaces = lost
        node.put_sandbox(rec)
        node.emit(rec.meta.id, "stopped", rec.meta.id)
    return lost


def pins_lost_error(rec: SandboxRecord) -> FailedPrecondition:
    """What CreateContainer answers for a pod whose pins are gone."""
    meta = rec.meta
    paths = ", ".join(f"{k} {meta.ipc_ns if k == 'ipc' else meta.uts_ns}"
                      for k in rec.status.lost_namespaces)
    return FailedPrecondition(
        f"pod sandbox {meta.id} is not ready: its pinned namespaces are gone ({paths}; "
        f"unmounted, or runtimed's run directory does not propagate mounts); stop and "
        f"remove the pod and run it again")
