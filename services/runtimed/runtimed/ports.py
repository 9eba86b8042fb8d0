"""What the rooms need from outside runtimed, as Protocols: the host (mounts, namespaces,
pod files, cgroups) and the two peer daemons. The OCI runtime and the container monitor
have theirs beside their implementations (`oci.runtime.RuntimeImpl`,
`conmon.monitor.Monitor`). `host.LinuxHost` and the `crib_common` clients are the real
ones; unit tests drive the lifecycles with small fakes of all of them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

from crib_common.models.imaged import (
    ImageInfo,
    Mount,
    PullEvent,
    PullRequest,
    Snapshot,
    SnapshotCreate,
    SnapshotUsage,
)
from crib_common.models.netd import PodNetwork, PodNetworkCreate

from .cgroups import CgroupStats
from .userns.mappings import PodUserns

__all__ = ["Host", "ImagedPeer", "NetdPeer"]


class Host(Protocol):
    """The node's kernel and filesystems, as the lifecycles change them. Every removal
    tolerates what it removes being gone already."""

    swap_controller: bool

    def mount_all(self, mounts: list[Mount], target: Path) -> None: ...
    # Pod user namespaces (`sandbox.idmapped`): the pod's namespaces pinned inside its
    # user namespace, and mounts ID-mapped through it.
    def pod_namespaces(self, ns_dir: Path, pod: PodUserns, *, ipc: bool, uts: bool,
                       hostname: str) -> AbstractAsyncContextManager[dict[str, str]]:
        """Pinned under `ns_dir` ({"user": pin, "ipc": ..., "uts": ...}); in the block
        also "held", the user namespace as its holder's /proc path, for netd."""
    def mount_overlay_idmapped(self, mounts: list[Mount], target: Path, userns_path: str,
                               root: tuple[int, int], work: Path) -> None: ...
    def idmapped_clone(self, source: str, target: Path, userns_path: str) -> None: ...
    def unmount_under(self, path: str) -> None:
        """Unmount everything at or below `path`; OSError when one stays mounted."""
    async def pin_namespaces(self, ns_dir: Path, *, ipc: bool, uts: bool,
                             hostname: str) -> dict[str, str]: ...
    def unpin_namespaces(self, ns_dir: Path) -> None: ...
    def lost_pins(self, pins: dict[str, str]) -> list[str]:
        """The kinds of `pins` ({"ipc": path}) whose namespace is no longer held there."""
    def write_pod_files(self, pod_dir: Path, hostname: str, dns: Any, ips: list[str],
                        host_network: bool, owner: tuple[int, int] | None = None) -> None:
        """hostname, resolv.conf, hosts; `owner` (host uid, gid): a pod user namespace's
        root, who owns them then."""
    def mount_shm(self, target: Path) -> None: ...
    # cgroups: `cgroup_path` is always the path under the cgroup root (a systemd slice
    # expanded, `cgroups.pod_cgroup_path`), the same on v1 and v2.
    def describe_cgroups(self) -> dict[str, Any]:
        """The host's cgroup mode (v1 hybrid/legacy or v2 unified), for /healthz."""
    def apply_pod_resources(self, cgroup_path: str, res: dict[str, Any]) -> None:
        """FailedPrecondition naming the controller when a limit cannot be applied."""
    def kill_cgroup(self, cgroup_path: str) -> int:
        """SIGKILL everything in the cgroup and below (cgroup.kill where there is one)."""
    def join_cgroup(self, cgroup_path: str, pid: int) -> None:
        """Move `pid` into the cgroup (made where missing) in every hierarchy; OSError
        when the kernel refuses."""
    def cgroup_children(self, cgroup_path: str) -> set[str]:
        """Names of the cgroups directly below it (in any hierarchy)."""
    def remove_cgroup(self, cgroup_path: str) -> list[str]: ...
    def read_stats(self, cgroup_path: str) -> CgroupStats: ...
    def oom_killed(self, cgroup_path: str) -> bool: ...


class ImagedPeer(Protocol):
    """What runtimed asks of imaged (`crib_common.clients.imaged.ImagedClient`)."""

    async def resolve_image(self, ref: str, *, timeout: float | None = ...) -> ImageInfo: ...
    def pull(self, request: PullRequest, *,
             timeout: float | None = ...) -> AsyncIterator[PullEvent]: ...
    async def create_snapshot(self, request: SnapshotCreate, *,
                              timeout: float | None = ...) -> Snapshot: ...
    async def list_snapshots(self, *, timeout: float | None = ...) -> list[Snapshot]: ...
    async def snapshot_usage(self, key: str, *,
                             timeout: float | None = ...) -> SnapshotUsage: ...
    async def remove_snapshot(self, key: str, *, timeout: float | None = ...) -> None: ...
    async def close(self) -> None: ...


class NetdPeer(Protocol):
    """What runtimed asks of netd (`crib_common.clients.netd.NetdClient`)."""

    async def create_pod_network(self, request: PodNetworkCreate, *,
                                 timeout: float | None = ...) -> PodNetwork: ...
    async def list_pod_networks(self, *, timeout: float | None = ...) -> list[PodNetwork]: ...
    async def remove_pod_network(self, pod_id: str, *,
                                 timeout: float | None = ...) -> None: ...
    async def close(self) -> None: ...
