"""CRI `RunPodSandbox`: check the config, then set the pod up (`lifecycle.sandboxes`).

A retry of a create that outlived the kubelet's deadline collects that create's result
(`parking`), keyed by the pod's name and attempt.
"""

from __future__ import annotations

import os
import re

from crib_common.cri.runtime.v1 import (
    NamespaceMode,
    NamespaceOption,
    PodSandboxConfig,
    RunPodSandboxRequest,
    RunPodSandboxResponse,
)
from crib_common.errors import FailedPrecondition, InvalidArgument
from crib_common.server import CriTable

from .. import cgroups
from ..daemon import Runtimed
from ..lifecycle.sandboxes import SandboxRequest
from ..oci.spec import is_set, resources_to_dict
from ..userns.mappings import check_pod_userns

__all__ = ["check_hostname", "check_sysctls", "register"]


def register(table: CriTable, runtimed: Runtimed) -> None:
    @table.unary("/runtime.v1.RuntimeService/RunPodSandbox", RunPodSandboxRequest)
    async def run_pod_sandbox(request: RunPodSandboxRequest) -> RunPodSandboxResponse:
        if not is_set(request.config):
            raise InvalidArgument("RunPodSandbox needs a config")
        config = request.config
        handler = runtimed.node.runtime_for(request.runtime_handler)
        req = _sandbox_request(config)
        if req.meta["userns_mappings"] and not runtimed.node.userns_supported:
            # Status did not offer them (user_namespaces false): the kubelet never asks.
            raise FailedPrecondition("user namespaces are not available on this node: "
                                     f"{runtimed.node.userns_reason}")
        metadata = config.metadata
        name = f"pod/{metadata.name}_{metadata.namespace}_{metadata.uid}_{metadata.attempt}"
        sid = await runtimed.parking.run(name, lambda: runtimed.sandboxes.run(req, handler))
        return RunPodSandboxResponse(pod_sandbox_id=sid)


def _sandbox_request(config: PodSandboxConfig) -> SandboxRequest:
    metadata = config.metadata
    if not is_set(metadata) or not metadata.name or not metadata.namespace or not metadata.uid:
        raise InvalidArgument("sandbox metadata needs name, namespace and uid")
    check_hostname(config.hostname)
    if config.log_directory and not config.log_directory.startswith("/"):
        raise InvalidArgument(f"log_directory {config.log_directory!r} must be absolute")
    linux = config.linux if is_set(config.linux) else None
    security = linux.security_context if linux is not None else None
    # Unset options mean POD for every namespace (api.proto: POD = 0 is the default);
    # the kubelet sends pid=CONTAINER unless the pod shares its process namespace.
    ns = security.namespace_options if security is not None else NamespaceOption()
    host_net = ns.network == NamespaceMode.NODE
    host_pid = ns.pid == NamespaceMode.NODE
    host_ipc = ns.ipc == NamespaceMode.NODE
    userns = check_pod_userns(ns, host_network=host_net, host_pid=host_pid,
                              host_ipc=host_ipc)
    sysctls = dict(linux.sysctls) if linux is not None else {}
    check_sysctls(sysctls, host_network=host_net, host_ipc=host_ipc)
    resources: dict[str, object] = {}
    if linux is not None:
        resources = cgroups.pod_resources(
            resources_to_dict(linux.resources if is_set(linux.resources) else None),
            resources_to_dict(linux.overhead if is_set(linux.overhead) else None))
    return SandboxRequest(
        meta=dict(
            name=metadata.name, namespace=metadata.namespace, uid=metadata.uid,
            attempt=metadata.attempt,
            labels=dict(config.labels), annotations=dict(config.annotations),
            hostname=config.hostname, log_directory=config.log_directory,
            host_network=host_net, host_pid=host_pid, host_ipc=host_ipc,
            shared_pid=ns.pid == NamespaceMode.POD and not host_pid, sysctls=sysctls,
            port_mappings=[{"protocol": int(p.protocol), "container_port": p.container_port,
                            "host_port": p.host_port, "host_ip": p.host_ip}
                           for p in config.port_mappings],
            userns_mappings=userns.to_record() if userns is not None else {},
            config=bytes(config).hex()),
        dns=config.dns_config if is_set(config.dns_config) else None,
        resources=resources,
        cgroup_parent=linux.cgroup_parent if linux is not None else "")


def check_hostname(name: str) -> None:
    """A pod hostname is what sethostname(2) takes (at most 64 bytes) and a DNS label set
    (RFC 1123); it is also an argument of hostname(1), so no leading dash."""
    if not name:
        return
    if len(name) > 64 or name.startswith(("-", ".")) or any(
            not (c.isascii() and (c.isalnum() or c in "-.")) for c in name):
        raise InvalidArgument(f"invalid pod hostname {name!r}")


# The namespaced sysctls, as the kubelet's sysctl allowlist knows them
# (pkg/kubelet/sysctl/namespace.go): IPC ones and, with the pod's own network
# namespace, net.*. Anything else would change the whole node, or is unknown.
_IPC_SYSCTLS = ("kernel.shm_rmid_forced", "kernel.shmmax", "kernel.shmall", "kernel.shmmni",
                "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem")
_SYSCTL_NAME = re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_\-:+@]+)+$")


def check_sysctls(sysctls: dict[str, str], *, host_network: bool, host_ipc: bool) -> None:
    """InvalidArgument naming the first sysctl a pod may not set."""
    for key, value in sysctls.items():
        # "a/b/c" is the kubelet's other spelling of "a.b.c".
        name = key.replace("/", ".") if "/" in key and "." not in key else key
        if not _SYSCTL_NAME.match(name) or "\n" in value:
            raise InvalidArgument(f"sysctl {key!r} is not a valid name")
        if name.startswith("net."):
            if host_network:
                raise InvalidArgument(
                    f"sysctl {key} needs the pod's own network namespace")
            continue
        if name in _IPC_SYSCTLS or name.startswith("fs.mqueue."):
            if host_ipc:
                raise InvalidArgument(f"sysctl {key} needs the pod's own IPC namespace")
            if name.startswith("fs.mqueue.") and not os.path.exists(
                    "/proc/sys/" + name.replace(".", "/")):
                raise InvalidArgument(f"sysctl {key} is not known to this kernel")
            continue
        raise InvalidArgument(f"sysctl {key} is not namespaced: a pod may not set it "
                              "(only kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.* "
                              "and net.*)")
