"""The routing table: which daemon owns each CRI RPC.

Adding an RPC is one row. An RPC without a row answers UNIMPLEMENTED at once, naming it;
a routed RPC its daemon does not implement yet answers UNIMPLEMENTED from the daemon.
`LOCAL` rows are answered by the gateway itself (Status aggregates the daemons' health).

The gateway never decodes a forwarded message, so it does not load the generated CRI
types (about 6 MiB of a daemon's memory, issue 14): `SERVER_STREAMING` and `UNROUTED`
complete what it needs to know of api.proto's services, and
`tests/unit/gateway/test_routes.py` checks them against the generated service bases.
"""

from __future__ import annotations

from typing import Final

RUNTIME = "/runtime.v1.RuntimeService/"
IMAGE = "/runtime.v1.ImageService/"

IMAGED: Final = "imaged"
RUNTIMED: Final = "runtimed"
LOCAL: Final = "gateway"

ROUTES: dict[str, str] = {
    RUNTIME + "Version": RUNTIMED,
    RUNTIME + "Status": LOCAL,
    RUNTIME + "RunPodSandbox": RUNTIMED,
    RUNTIME + "StopPodSandbox": RUNTIMED,
    RUNTIME + "RemovePodSandbox": RUNTIMED,
    RUNTIME + "PodSandboxStatus": RUNTIMED,
    RUNTIME + "ListPodSandbox": RUNTIMED,
    RUNTIME + "StreamPodSandboxes": RUNTIMED,
    RUNTIME + "CreateContainer": RUNTIMED,
    RUNTIME + "StartContainer": RUNTIMED,
    RUNTIME + "StopContainer": RUNTIMED,
    RUNTIME + "RemoveContainer": RUNTIMED,
    RUNTIME + "ListContainers": RUNTIMED,
    RUNTIME + "StreamContainers": RUNTIMED,
    RUNTIME + "ContainerStatus": RUNTIMED,
    RUNTIME + "UpdateContainerResources": RUNTIMED,
    RUNTIME + "ReopenContainerLog": RUNTIMED,
    RUNTIME + "ExecSync": RUNTIMED,
    RUNTIME + "Exec": RUNTIMED,
    RUNTIME + "Attach": RUNTIMED,
    RUNTIME + "PortForward": RUNTIMED,
    RUNTIME + "ContainerStats": RUNTIMED,
    RUNTIME + "ListContainerStats": RUNTIMED,
    RUNTIME + "StreamContainerStats": RUNTIMED,
    RUNTIME + "PodSandboxStats": RUNTIMED,
    RUNTIME + "ListPodSandboxStats": RUNTIMED,
    RUNTIME + "StreamPodSandboxStats": RUNTIMED,
    RUNTIME + "UpdateRuntimeConfig": RUNTIMED,
    RUNTIME + "GetContainerEvents": RUNTIMED,
    RUNTIME + "ListMetricDescriptors": RUNTIMED,
    RUNTIME + "ListPodSandboxMetrics": RUNTIMED,
    RUNTIME + "StreamPodSandboxMetrics": RUNTIMED,
    RUNTIME + "RuntimeConfig": RUNTIMED,
    RUNTIME + "UpdatePodSandboxResources": RUNTIMED,
    IMAGE + "ListImages": IMAGED,
    IMAGE + "StreamImages": IMAGED,
    IMAGE + "ImageStatus": IMAGED,
    IMAGE + "PullImage": IMAGED,
    IMAGE + "RemoveImage": IMAGED,
    IMAGE + "ImageFsInfo": IMAGED,
}

# api.proto's `returns (stream ...)` RPCs; every other one is unary.
SERVER_STREAMING: frozenset[str] = frozenset({
    RUNTIME + "StreamPodSandboxes",
    RUNTIME + "StreamContainers",
    RUNTIME + "GetContainerEvents",
    RUNTIME + "StreamContainerStats",
    RUNTIME + "StreamPodSandboxStats",
    RUNTIME + "StreamPodSandboxMetrics",
    IMAGE + "StreamImages",
})

# RPCs of api.proto no daemon serves yet: answered UNIMPLEMENTED, naming them.
UNROUTED: tuple[str, ...] = (
    RUNTIME + "CheckpointContainer",
    RUNTIME + "CheckpointPod",
    RUNTIME + "RestorePod",
)
