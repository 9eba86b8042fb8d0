"""The records runtimed persists, and their state machines.

Sandbox:

    creating ──> ready ──> notready ──> (deleted)
        └───────────────────────────────┘   rollback of a half-done RunPodSandbox

Container:

    creating ──> created ──> running ──> exited ──> (deleted)
        │           └──────────────────────┘  (exited without start: conmon saw the exit)
        └──> (deleted)  rollback of a half-done CreateContainer
    any ──> unknown    recovery could not tell (no conmon, no exit file, runtime lost it)

Metadata is written once at create; status is rewritten at each transition, in the same
row (one SQLite transaction per transition, disk before memory). In-flight flags
(stopping, removing) are never persisted: after a crash the kubelet's retry redoes them,
and every step of stop/remove is idempotent.

What may change while runtimed is down (the assumptions recovery checks against, as the
NOTE in containerd's restart.go): containers exit (conmon writes exit files), conmon dies,
the OCI runtime's state directory can vanish (tmpfs after reboot), mounts can be gone.
Records themselves are only changed by runtimed.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from crib_common.models.base import JsonModel
from crib_common.state import Record

__all__ = [
    "ContainerMeta",
    "ContainerRecord",
    "ContainerStatusRec",
    "SandboxMeta",
    "SandboxRecord",
    "SandboxStatusRec",
    "SANDBOX_KIND",
    "CONTAINER_KIND",
]

SANDBOX_KIND = "sandbox"
CONTAINER_KIND = "container"

_Inner = ConfigDict(extra="ignore")


class SandboxMeta(JsonModel):
    """Written once by RunPodSandbox."""

    model_config = _Inner
    id: str
    name: str
    namespace: str
    uid: str
    attempt: int = 0
    handler: str
    created_at: int  # unix nanoseconds
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    hostname: str = ""
    log_directory: str = ""
    host_network: bool = False
    host_pid: bool = False
    host_ipc: bool = False
    shared_pid: bool = False  # namespace_options.pid == POD: catatonit holds the PID ns
    # The pod's cgroup parent as runtimed was given it (the kubelet's
    # "/kubepods/burstable/pod<uid>" or "kubepods-burstable-pod<uid>.slice") or made it
    # (`cgroups.pod_cgroup_parent`). Records of the previous version hold the cgroupfs
    # path of a pod cgroup crib made under its own /crib.
    cgroup_parent: str = ""
    # Added with the kubelet's tree (issue 10); the defaults read old records right.
    # The pod cgroup's path under the cgroup root (a slice expanded); "" in old records,
    # where cgroup_parent is that path.
    cgroup_path: str = ""
    # crib made the pod cgroup (no parent from the kubelet): it applies the pod's limits
    # and kills and removes it at teardown. The kubelet's own pod cgroups are its own.
    cgroup_owned: bool = True
    # The infra process's cgroup path ("" in old records: <cgroup_parent>/crib-<id>).
    infra_cgroup: str = ""
    # The infra monitor's own cgroup, made only when an infra runs ("" in old records).
    infra_monitor_cgroup: str = ""
    pod_dir: str = ""  # hostname, resolv.conf, hosts, shm
    ipc_ns: str = ""  # pinned namespace files ("" = host)
    uts_ns: str = ""
    netns_path: str = ""  # from netd ("" = host network)
    sysctls: dict[str, str] = Field(default_factory=dict)
    port_mappings: list[dict[str, Any]] = Field(default_factory=list)
    config: str = ""  # PodSandboxConfig protobuf, hex: the verbose status and containers use it
    # settings.runtimed.pause_image was set: the infra container runs this image (its ID)
    # from the writable snapshot `infra_snapshot`, holding the pod's namespaces.
    pause_image: str = ""
    infra_snapshot: str = ""
    # A pod user namespace (hostUsers: false, `userns.mappings`): its mapping as
    # PodUserns.to_record() gives it ({} = the host's), and its pin ("" until pinned).
    userns_mappings: dict[str, Any] = Field(default_factory=dict)
    userns: str = ""

    @property
    def pod_cgroup(self) -> str:
        """The pod cgroup's path under the cgroup root (stats, limits, kill, removal)."""
        return self.cgroup_path or self.cgroup_parent

    @property
    def infra_cgroup_path(self) -> str:
        return self.infra_cgroup or f"{self.cgroup_parent}/crib-{self.id}"

    @property
    def has_infra(self) -> bool:
        """An infra container runs: catatonit for a shared PID namespace, or the pause
        image whenever one is configured."""
        return self.shared_pid or bool(self.pause_image)


class SandboxStatusRec(JsonModel):
    model_config = _Inner
    state: Literal["creating", "ready", "notready"] = "creating"
    ips: list[str] = Field(default_factory=list)
    infra_pid: int = 0  # catatonit (shared PID namespace) or the pause container
    infra_conmon_pid: int = 0
    infra_started: int = 0  # the infra's start time (clock ticks), against pid reuse
    # Pinned namespaces ("ipc", "uts") found gone (at start, or after a failed create or
    # start): the pod is notready and cannot take containers; the kubelet recreates it.
    lost_namespaces: list[str] = Field(default_factory=list)
    # CRI pod-level resources (LinuxPodSandboxConfig.resources plus overhead, as stored by
    # resources_to_dict) applied to the pod cgroup; UpdatePodSandboxResources rewrites them.
    resources: dict[str, Any] = Field(default_factory=dict)


class SandboxRecord(Record):
    SCHEMA_VERSION: ClassVar[int] = 1
    meta: SandboxMeta
    status: SandboxStatusRec = Field(default_factory=SandboxStatusRec)


ContainerState = Literal["creating", "created", "running", "exited", "unknown"]


class ContainerMeta(JsonModel):
    """Written once by CreateContainer."""

    model_config = _Inner
    id: str
    pod_id: str
    name: str
    attempt: int = 0
    handler: str
    created_at: int
    image: str  # what the kubelet asked for
    image_id: str = ""
    image_ref: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    log_path: str = ""
    bundle: str
    snapshot_key: str = ""
    stop_signal: str = "SIGTERM"
    tty: bool = False
    stdin: bool = False
    stdin_once: bool = False
    mounts: list[dict[str, Any]] = Field(default_factory=list)  # CRI Mount fields
    # Snapshots of the images mounted as volumes (CRI Mount.image), read-only.
    image_mounts: list[str] = Field(default_factory=list)
    uid: int = 0
    gid: int = 0
    groups: list[int] = Field(default_factory=list)
    # The container cgroup's path under the cgroup root (stats, OOM, kill): with
    # cgroupfs "<pod parent>/<id>" (crib-<id> in old records), with systemd
    # "<pod slice path>/crib-<id>.scope". config.json holds the runtime's form.
    cgroup_path: str = ""
    # The monitor's own cgroup (`cgroups.monitor_cgroup`), removed with the container;
    # "" in old records (their monitor shares runtimed's cgroup).
    monitor_cgroup: str = ""


class ContainerStatusRec(JsonModel):
    model_config = _Inner
    state: ContainerState = "creating"
    pid: int = 0
    conmon_pid: int = 0
    conmon_started: int = 0  # conmon's start time (clock ticks), against pid reuse
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    resources: dict[str, Any] = Field(default_factory=dict)  # CRI LinuxContainerResources


class ContainerRecord(Record):
    SCHEMA_VERSION: ClassVar[int] = 1
    meta: ContainerMeta
    status: ContainerStatusRec = Field(default_factory=ContainerStatusRec)
