"""The HTTP contract of imaged, shared by the daemon and `crib_common.clients.imaged`.

Between daemons, models ignore unknown fields (a restarted imaged one version ahead still
talks to runtimed); operator request bodies forbid them so typos fail loudly.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from .base import JsonModel

__all__ = [
    "DroppedImage",
    "ImageFsUsage",
    "ImageInfo",
    "LayerProgress",
    "Mount",
    "PruneResult",
    "PullEvent",
    "PullInfo",
    "PullLayer",
    "PullPod",
    "PullRequest",
    "PullRequester",
    "PullWatchEvent",
    "RecoveryReport",
    "RemoveResult",
    "Snapshot",
    "SnapshotCreate",
    "SnapshotUsage",
]

_Peer = ConfigDict(extra="ignore")
_Operator = ConfigDict(extra="forbid")


class ImageInfo(JsonModel):
    """One stored image. `config` is the OCI image config JSON (with its `config` object
    holding Entrypoint, Cmd, Env, WorkingDir, User, StopSignal, Volumes, ...)."""

    model_config = _Peer
    id: str  # the config digest, "sha256:..."
    repo_tags: list[str] = Field(default_factory=list)
    repo_digests: list[str] = Field(default_factory=list)
    size: int = 0
    manifest_digest: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    pinned: bool = False
    created_at: int = 0  # unix nanoseconds
    # Blob digest -> why it is not on disk (recovery found it gone; the next pull or
    # imaged's repair fetches it again). The image runs: its layers are all unpacked.
    missing: dict[str, str] = Field(default_factory=dict)


class DroppedImage(JsonModel):
    """An image recovery could not keep (an unpacked layer was gone)."""

    model_config = _Peer
    id: str
    repo_tags: list[str] = Field(default_factory=list)
    repo_digests: list[str] = Field(default_factory=list)
    reason: str = ""
    missing: list[str] = Field(default_factory=list)
    dropped_at: int = 0  # unix nanoseconds


class RecoveryReport(JsonModel):
    """What imaged's last recovery did (`counts`), the images it dropped (kept until
    cleared, over restarts) and the images it kept with blobs missing."""

    model_config = _Peer
    counts: dict[str, int] = Field(default_factory=dict)
    dropped: list[DroppedImage] = Field(default_factory=list)
    incomplete: list[ImageInfo] = Field(default_factory=list)


class Mount(JsonModel):
    """A mount description as containerd's snapshotters give it (`mount -t type -o options
    source target`)."""

    model_config = _Peer
    type: str
    source: str
    options: list[str] = Field(default_factory=list)


class SnapshotCreate(JsonModel):
    """Prepare a writable snapshot `key` (runtimed uses the container ID) of `image`
    (a reference, an ID or a unique ID prefix)."""

    model_config = _Operator
    key: str
    image: str
    labels: dict[str, str] = Field(default_factory=dict)


class Snapshot(JsonModel):
    model_config = _Peer
    key: str
    image_id: str
    # Overlay mount: lowerdir (top layer first), upperdir and workdir in options. Option
    # strings stay under the kernel's one-page limit for any layer count.
    mounts: list[Mount]
    upperdir: str
    created_at: int = 0
    labels: dict[str, str] = Field(default_factory=dict)


class SnapshotUsage(JsonModel):
    """Disk used by the writable layer of a snapshot."""

    model_config = _Peer
    key: str
    bytes: int
    inodes: int
    # The mount point of the filesystem holding it: the one ImageFsInfo names for the
    # writable layers, so the kubelet matches a container's stats with it.
    mountpoint: str = ""


class PullPod(JsonModel):
    """The pod a pull is for (CRI `PullImageRequest.sandbox_config.metadata`, or the pod
    whose pause image runtimed pulls)."""

    model_config = _Peer
    name: str = ""
    namespace: str = ""
    uid: str = ""


class PullRequest(JsonModel):
    """Operator pull (`POST /v1/images/pull`); credentials as CRI's AuthConfig.
    `requester` says who asks (shown in `GET /v1/pulls`): "rest" for a plain API call,
    "cli" for `crib pull`, "pause" for runtimed's pause image (with `pod`).

    Also sent by runtimed (the pause image), so unknown fields are ignored, as between
    peers: a runtimed restarted a version ahead of imaged must still get its pull."""

    model_config = _Peer
    reference: str
    username: str = ""
    password: str = ""
    auth: str = ""
    identity_token: str = ""
    registry_token: str = ""
    requester: Literal["rest", "cli", "pause"] = "rest"
    pod: PullPod | None = None


class PullRequester(JsonModel):
    """Who started a pull: "cri" (the kubelet or another CRI client), "cli", "rest",
    "pause" (runtimed, for a pod's infra container) or "repair" (imaged itself, fetching
    blobs recovery found missing)."""

    model_config = _Peer
    kind: str
    pod: PullPod | None = None


class PullLayer(JsonModel):
    """One layer of an in-flight pull. `state`: waiting | downloading | verifying |
    unpacking | done | exists (already unpacked here) | shared (another pull, `shared_with`,
    does the work this layer waits on; `done` shows its bytes)."""

    model_config = _Peer
    digest: str
    size: int = 0
    done: int = 0
    state: str = "waiting"
    shared_with: str = ""


class PullInfo(JsonModel):
    """One row of imaged's pull table (`GET /v1/pulls`). `state`: resolving | pulling |
    done | failed. Bytes: `size` is what the layers weigh, `done` what is here of them
    (layers already present count whole); `rate` (bytes/s over the last seconds) and
    `eta` (seconds, None while unknown) are for the pull as a whole."""

    model_config = _Peer
    id: str
    reference: str
    digest: str = ""  # the manifest digest, once resolved
    image_id: str = ""  # the config digest, once done
    requester: PullRequester
    state: str
    started_at: int  # unix nanoseconds
    finished_at: int = 0
    elapsed: float = 0.0  # seconds
    size: int = 0
    done: int = 0
    rate: float = 0.0
    eta: float | None = None
    layers: list[PullLayer] = Field(default_factory=list)
    error_kind: str = ""
    error: str = ""


class PullWatchEvent(JsonModel):
    """One line of the pull progress stream (`GET /v1/pulls/events`, NDJSON). `type`:
    "pull" (a pull's state, throttled; the last one of each pull has state done or
    failed), "idle" (no pull is in flight any more), "lagged" (this watcher fell too far
    behind and the stream ends; watch again)."""

    model_config = _Peer
    type: Literal["pull", "idle", "lagged"]
    pull: PullInfo | None = None


class LayerProgress(JsonModel):
    model_config = _Peer
    digest: str
    size: int = 0
    downloaded: int = 0
    # waiting | downloading | verifying | unpacking | done | exists | shared
    status: str = "waiting"


class PullEvent(JsonModel):
    """One line of the NDJSON pull stream; the last has status "done" or "error"."""

    model_config = _Peer
    reference: str
    status: str  # resolving | pulling | done | error
    image_id: str = ""
    layers: list[LayerProgress] = Field(default_factory=list)
    error_kind: str = ""
    error: str = ""
    # The pull's row of imaged's pull table, as `GET /v1/pulls/{id}` answers it.
    pull: PullInfo | None = None


class RemoveResult(JsonModel):
    model_config = _Peer
    removed: list[str] = Field(default_factory=list)


class PruneResult(JsonModel):
    model_config = _Peer
    images: list[str] = Field(default_factory=list)
    blobs: int = 0
    layers: int = 0


class ImageFsUsage(JsonModel):
    """What the image store occupies (as CRI ImageFsInfo's FilesystemUsage)."""

    model_config = _Peer
    mountpoint: str
    used_bytes: int
    inodes_used: int
    timestamp: int  # unix nanoseconds
    images: int = 0
    layers: int = 0
    blobs: int = 0
