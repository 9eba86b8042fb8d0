"""CRI `CreateContainer`: check the config against its pod, resolve the image, then set
the container up (`lifecycle.containers`: snapshot, config.json, monitor + `<runtime>
create`).

A retry of a create that outlived the kubelet's deadline collects that create's result
(`parking`), keyed by the pod, the container's name and attempt.
"""

from __future__ import annotations

import os

from crib_common.cri.runtime.v1 import (
    ContainerConfig,
    CreateContainerRequest,
    CreateContainerResponse,
)
from crib_common.errors import FailedPrecondition, InvalidArgument
from crib_common.server import CriTable

from ..daemon import Runtimed
from ..lifecycle.pins import pins_lost_error
from ..oci.spec import is_set
from ..store.records import SandboxRecord

__all__ = ["check_mounts", "log_path", "register"]


def register(table: CriTable, runtimed: Runtimed) -> None:
    node = runtimed.node

    @table.unary("/runtime.v1.RuntimeService/CreateContainer", CreateContainerRequest)
    async def create_container(request: CreateContainerRequest) -> CreateContainerResponse:
        if not is_set(request.config):
            raise InvalidArgument("CreateContainer needs a config")
        config = request.config
        pod = node.find_sandbox(request.pod_sandbox_id)
        path = _check(config, pod)
        metadata = config.metadata
        name = f"ctr/{pod.meta.id}/{metadata.name}_{metadata.attempt}"

        async def create() -> str:
            if pod.status.state != "ready":
                if pod.status.lost_namespaces:
                    raise pins_lost_error(pod)
                raise FailedPrecondition(f"pod sandbox {pod.meta.id} is not ready")
            handler = node.runtime_for(pod.meta.handler)
            image = await node.imaged.resolve_image(config.image.image)
            return await runtimed.containers.create(pod, config, image, handler, path)

        cid = await runtimed.parking.run(name, create)
        return CreateContainerResponse(container_id=cid)


def _check(config: ContainerConfig, pod: SandboxRecord) -> str:
    """Everything a config can be refused for before any work; returns the log path."""
    metadata = config.metadata
    if not is_set(metadata) or not metadata.name:
        raise InvalidArgument("container metadata needs a name")
    if not is_set(config.image) or not config.image.image:
        raise InvalidArgument("container config needs an image")
    check_mounts(config)
    security = config.linux.security_context if is_set(config.linux) else None
    if security is not None and is_set(security) and is_set(security.run_as_group) and not (
            is_set(security.run_as_user) or security.run_as_username):
        # As containerd and CRI-O: a group alone would run as the image's user with a
        # group it never asked for.
        raise InvalidArgument("run_as_group needs run_as_user or run_as_username")
    return log_path(pod.meta.log_directory, config.log_path)


def check_mounts(config: ContainerConfig) -> None:
    """Host paths absolute and clean (a relative one would be resolved from the bundle
    directory by the runtime: `../../../../etc` reached the host's /etc); image volumes
    read-only and without a host path."""
    for index, m in enumerate(config.mounts):
        where = f"mounts[{index}]"
        if is_set(m.image) and m.image.image:
            if m.host_path:
                raise InvalidArgument(f"{where}.host_path: an image mount has none "
                                      f"({m.container_path})")
            if not m.readonly:
                raise InvalidArgument(f"{where}.readonly: image volumes are read-only "
                                      f"({m.container_path})")
            continue
        path = m.host_path
        if not path:
            continue  # refused by the spec builder, naming the mount
        if not path.startswith("/") or os.path.normpath(path) != (path.rstrip("/") or "/"):
            raise InvalidArgument(f"{where}.host_path {path!r} must be an absolute, clean "
                                  "path")


def log_path(log_directory: str, path: str) -> str:
    """The kubelet's log_path is relative to the pod's log_directory (api.proto); it may
    not climb out of it."""
    if not path:
        return ""
    if path.startswith("/"):
        return os.path.normpath(path)
    base = log_directory or "/"
    full = os.path.normpath(os.path.join(base, path))
    if not (full + "/").startswith(base.rstrip("/") + "/"):
        raise InvalidArgument(f"log_path {path!r} leaves the pod's log directory")
    return full
