"""The HTTP contract of netd, shared by the daemon and `crib_common.clients.netd`."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from .base import JsonModel

__all__ = [
    "CniConfigView",
    "DnsConfig",
    "GcReport",
    "NetworkNamespace",
    "PodIP",
    "PodNetwork",
    "PodNetworkCreate",
    "PortMapping",
]

_Peer = ConfigDict(extra="ignore")


class PortMapping(JsonModel):
    """CNI `portMappings` capability entry (CONVENTIONS.md)."""

    model_config = _Peer
    host_port: int
    container_port: int
    protocol: str = "tcp"  # tcp, udp, sctp (lower case, as CNI expects)
    host_ip: str = ""


class DnsConfig(JsonModel):
    model_config = _Peer
    servers: list[str] = Field(default_factory=list)
    searches: list[str] = Field(default_factory=list)
    options: list[str] = Field(default_factory=list)


class PodNetworkCreate(JsonModel):
    """Create the pod's network namespace (pinned, survives netd restarts) and attach it
    through the CNI configuration (ADD). Idempotent per `pod_id`."""

    model_config = _Peer
    pod_id: str
    pod_name: str
    pod_namespace: str
    pod_uid: str = ""
    port_mappings: list[PortMapping] = Field(default_factory=list)
    dns: DnsConfig | None = None
    bandwidth: dict[str, int] | None = None  # ingressRate, ingressBurst, egressRate, egressBurst
    annotations: dict[str, str] = Field(default_factory=dict)
    # Added for user namespaces (hostUsers: false): the pinned user namespace of the
    # pod (runtimed's); the network namespace is created owned by it. "" = the host's.
    userns_path: str = ""


class PodIP(JsonModel):
    model_config = _Peer
    ip: str  # address without prefix length
    family: int = 4  # 4 or 6
    interface: str = "eth0"
    gateway: str = ""


class PodNetwork(JsonModel):
    """A pod's namespace and attachment."""

    model_config = _Peer
    pod_id: str
    netns_path: str
    network_name: str = ""
    ips: list[PodIP] = Field(default_factory=list)
    # The CNI result of the last plugin of the chain, as the plugin printed it.
    result: dict[str, Any] = Field(default_factory=dict)
    created_at: int = 0
    # Added fields (optional, for operators): "creating", "ready" or "deleting"; a record
    # left "deleting" is one whose CNI DEL failed and will be retried.
    state: str = "ready"
    pod_name: str = ""
    pod_namespace: str = ""
    ifname: str = "eth0"
    # The configuration file the ADD used, and the CNI version spoken to the plugins.
    config_source: str = ""
    cni_version: str = ""
    port_mappings: list[PortMapping] = Field(default_factory=list)
    # False when the pinned namespace vanished behind netd's back (e.g. unmounted by hand).
    netns_present: bool = True


class NetworkNamespace(JsonModel):
    """A pinned network namespace under netd's netns_dir."""

    model_config = _Peer
    path: str
    pod_id: str = ""
    # A live namespace pin (nsfs bind mount), not just a leftover file.
    pinned: bool = True
    # An attachment record refers to it.
    attached: bool = False


class CniConfigView(JsonModel):
    """The CNI configuration in force, as netd reads it now."""

    model_config = _Peer
    ready: bool
    reason: str = ""
    message: str = ""
    conf_dir: str
    plugin_dirs: list[str] = Field(default_factory=list)
    source: str = ""
    name: str = ""
    cni_version: str = ""
    # The version netd speaks to these plugins (highest one they all support).
    negotiated_version: str = ""
    plugins: list[str] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)


class GcReport(JsonModel):
    """What `POST /v1/gc` did."""

    model_config = _Peer
    removed_namespaces: list[str] = Field(default_factory=list)
    cni_gc_ran: bool = False
    errors: list[str] = Field(default_factory=list)
