"""The HTTP contract of netd, shared by the daemon and `crib_common.clients.netd`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DnsConfig",
    "PodIP",
    "PodNetwork",
    "PodNetworkCreate",
    "PortMapping",
]

_Peer = ConfigDict(extra="ignore")


class PortMapping(BaseModel):
    """CNI `portMappings` capability entry (CONVENTIONS.md)."""

    model_config = _Peer
    host_port: int
    container_port: int
    protocol: str = "tcp"  # tcp, udp, sctp (lower case, as CNI expects)
    host_ip: str = ""


class DnsConfig(BaseModel):
    model_config = _Peer
    servers: list[str] = Field(default_factory=list)
    searches: list[str] = Field(default_factory=list)
    options: list[str] = Field(default_factory=list)


class PodNetworkCreate(BaseModel):
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


class PodIP(BaseModel):
    model_config = _Peer
    ip: str  # address without prefix length
    family: int = 4  # 4 or 6
    interface: str = "eth0"
    gateway: str = ""


class PodNetwork(BaseModel):
    """A pod's namespace and attachment."""

    model_config = _Peer
    pod_id: str
    netns_path: str
    network_name: str = ""
    ips: list[PodIP] = Field(default_factory=list)
    # The CNI result of the last plugin of the chain, as the plugin printed it.
    result: dict[str, Any] = Field(default_factory=dict)
    created_at: int = 0
