"""The user namespace mappings of pods, checked as containerd 2.x checks them.

The kubelet sends `NamespaceOption.userns_options` on the sandbox and on each container,
and the same mappings on each mount it wants ID-mapped (api.proto `UserNamespace`,
`Mount.uidMappings`). Mode POD with exactly one UID and one GID mapping that maps
container ID 0 is a pod user namespace; NODE (or nothing) is the host's; CONTAINER and
TARGET are refused (api.proto: "currently supports only POD and NODE"). Each refusal is
InvalidArgument naming the field and the rule.

Every container and the infra join the pod's namespace by path, with the mappings in
config.json too (`oci_userns`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import betterproto

from crib_common.cri.runtime.v1 import IdMapping as CriIdMapping
from crib_common.cri.runtime.v1 import Mount as CriMount
from crib_common.cri.runtime.v1 import NamespaceMode, NamespaceOption
from crib_common.errors import InvalidArgument
from crib_common.nsholder import IdMapping

__all__ = ["PodUserns", "check_container_userns", "check_mount_mappings",
           "check_pod_userns", "oci_userns"]

# IDs a mapping may reach: uid_t is 32 bits and (uid_t)-1 is never valid
# (user_namespaces(7)).
_ID_LIMIT = 2**32 - 1


@dataclass(frozen=True)
class PodUserns:
    """A pod's user namespace mapping: one UID and one GID range from container ID 0."""

    uids: tuple[IdMapping, ...]
    gids: tuple[IdMapping, ...]

    @property
    def root(self) -> tuple[int, int]:
        """The host UID and GID of the container's root."""
        return self.uids[0].host_id, self.gids[0].host_id

    def to_record(self) -> dict[str, list[dict[str, int]]]:
        return {"uids": [_as_dict(m) for m in self.uids],
                "gids": [_as_dict(m) for m in self.gids]}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> PodUserns | None:
        """The stored mapping (SandboxMeta.userns_mappings); None for a host-users pod."""
        if not rec:
            return None
        return cls(uids=tuple(IdMapping(**m) for m in rec.get("uids") or []),
                   gids=tuple(IdMapping(**m) for m in rec.get("gids") or []))

    def same_as(self, uids: Sequence[CriIdMapping], gids: Sequence[CriIdMapping]) -> bool:
        return _from_cri(uids) == self.uids and _from_cri(gids) == self.gids


def _as_dict(m: IdMapping) -> dict[str, int]:
    return {"container_id": m.container_id, "host_id": m.host_id, "length": m.length}


def _from_cri(mappings: Sequence[CriIdMapping]) -> tuple[IdMapping, ...]:
    return tuple(IdMapping(container_id=m.container_id, host_id=m.host_id, length=m.length)
                 for m in mappings)


def _show(mappings: Sequence[CriIdMapping] | Sequence[IdMapping]) -> str:
    return "[" + ", ".join(f"{m.container_id}->{m.host_id} x{m.length}"
                           for m in mappings) + "]"


def _mode_name(mode: int) -> str:
    try:
        return NamespaceMode(mode).name or str(mode)
    except ValueError:
        return str(mode)


def _check_mappings(kind: str, mappings: Sequence[CriIdMapping], where: str) -> None:
    if len(mappings) != 1:
        raise InvalidArgument(f"{where}: mode POD needs exactly one {kind} mapping, got "
                              f"{len(mappings)} {_show(mappings)}")
    m = mappings[0]
    if m.length == 0:
        raise InvalidArgument(f"{where}: {kind} mapping {_show(mappings)} is empty "
                              "(length 0)")
    if m.container_id != 0:
        raise InvalidArgument(f"{where}: {kind} mapping {_show(mappings)} does not map "
                              "container ID 0 (the container's root)")
    if m.host_id + m.length > _ID_LIMIT or m.container_id + m.length > _ID_LIMIT:
        raise InvalidArgument(f"{where}: {kind} mapping {_show(mappings)} runs past the "
                              "largest valid ID (4294967294)")


def check_pod_userns(ns: NamespaceOption, *, host_network: bool, host_pid: bool,
                     host_ipc: bool) -> PodUserns | None:
    """The pod's user namespace from a RunPodSandbox's namespace options: None for the
    host's (no options, or mode NODE without mappings); InvalidArgument naming the rule
    for anything else but one POD mapping of container ID 0 per kind."""
    where = "namespace_options.userns_options"
    userns = ns.userns_options
    if userns is None or not _on_wire(userns):
        return None
    mode = userns.mode
    if mode == NamespaceMode.NODE:
        if userns.uids or userns.gids:
            raise InvalidArgument(f"{where}: mode NODE (the host's user namespace) takes "
                                  "no mappings")
        return None
    if mode != NamespaceMode.POD:
        raise InvalidArgument(f"{where}: mode {_mode_name(mode)} is not supported; a user "
                              "namespace is POD or NODE (api.proto UserNamespace)")
    _check_mappings("uid", userns.uids, where)
    _check_mappings("gid", userns.gids, where)
    for shared, name in ((host_network, "network"), (host_pid, "PID"), (host_ipc, "IPC")):
        if shared:
            raise InvalidArgument(f"{where}: a pod user namespace cannot be combined with "
                                  f"the host's {name} namespace")
    return PodUserns(uids=_from_cri(userns.uids), gids=_from_cri(userns.gids))


def check_container_userns(ns: NamespaceOption | None, pod: PodUserns | None) -> None:
    """A container's user namespace options must be its pod's (every container joins
    the pod's namespace); absent options mean the pod's."""
    where = "container namespace_options.userns_options"
    userns = ns.userns_options if ns is not None else None
    if userns is None or not _on_wire(userns):
        return
    mode = userns.mode
    if mode not in (NamespaceMode.POD, NamespaceMode.NODE):
        raise InvalidArgument(f"{where}: mode {_mode_name(mode)} is not supported; a user "
                              "namespace is POD or NODE (api.proto UserNamespace)")
    pod_mode = NamespaceMode.POD if pod is not None else NamespaceMode.NODE
    if mode != pod_mode:
        raise InvalidArgument(f"{where}: mode {_mode_name(mode)} differs from the pod's "
                              f"({_mode_name(pod_mode)})")
    if pod is None:
        if userns.uids or userns.gids:
            raise InvalidArgument(f"{where}: mode NODE takes no mappings")
        return
    if not pod.same_as(userns.uids, userns.gids):
        raise InvalidArgument(
            f"{where}: mappings uid {_show(userns.uids)} gid {_show(userns.gids)} differ "
            f"from the pod's uid {_show(pod.uids)} gid {_show(pod.gids)}")


def check_mount_mappings(index: int, m: CriMount, pod: PodUserns | None) -> bool:
    """Whether mount `index` is to be ID-mapped: it carries mappings, and they are the
    pod's (crib ID-maps with the pod's own user namespace). InvalidArgument otherwise."""
    if not m.uid_mappings and not m.gid_mappings:
        return False
    where = f"mounts[{index}] ({m.container_path})"
    if pod is None:
        raise InvalidArgument(f"{where}: ID-mapped mounts need a pod with its own user "
                              "namespace (userns_options mode POD)")
    if not m.uid_mappings or not m.gid_mappings:
        raise InvalidArgument(f"{where}: an ID-mapped mount needs both uidMappings and "
                              "gidMappings")
    if not pod.same_as(m.uid_mappings, m.gid_mappings):
        raise InvalidArgument(
            f"{where}: mappings uid {_show(m.uid_mappings)} gid {_show(m.gid_mappings)} "
            f"differ from the pod's user namespace uid {_show(pod.uids)} gid "
            f"{_show(pod.gids)}")
    return True


def _on_wire(msg: Any) -> bool:
    return bool(betterproto.serialized_on_wire(msg))


# ---------------------------------------------------------------- config.json


def oci_userns(userns_path: str, pod: PodUserns) -> tuple[dict[str, str], dict[str, Any]]:
    """The `linux.namespaces` entry joining the pod's user namespace, and the
    `uidMappings`/`gidMappings` that go with it (config-linux.md): runc needs them even
    to join (it chowns its exec fifo and /dev to the container's root)."""
    def oci(ms: Sequence[IdMapping]) -> list[dict[str, int]]:
        return [{"containerID": m.container_id, "hostID": m.host_id, "size": m.length}
                for m in ms]

    return ({"type": "user", "path": userns_path},
            {"uidMappings": oci(pod.uids), "gidMappings": oci(pod.gids)})


