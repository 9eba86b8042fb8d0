"""Typed client for netd's HTTP API (used by runtimed and the CLI)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from ..client import DaemonClient
from ..models.netd import (
    CniConfigView,
    GcReport,
    NetworkNamespace,
    PodNetwork,
    PodNetworkCreate,
)

__all__ = ["NetdClient"]


class NetdClient(DaemonClient):
    def __init__(self, socket: Path, **kwargs: float) -> None:
        super().__init__("netd", socket, **kwargs)

    async def __aenter__(self) -> NetdClient:
        return self

    async def create_pod_network(self, request: PodNetworkCreate, *,
                                 timeout: float | None = 120.0) -> PodNetwork:
        """Create the pod's pinned netns and run CNI ADD; idempotent per pod_id."""
        result = await self.post_model("/v1/networks", request, PodNetwork, timeout=timeout)
        assert result is not None
        return result

    async def get_pod_network(self, pod_id: str, *, timeout: float | None = 10.0) -> PodNetwork:
        return await self.get_model(f"/v1/networks/{quote(pod_id, safe='')}", PodNetwork,
                                    timeout=timeout)

    async def list_pod_networks(self, *, timeout: float | None = 10.0) -> list[PodNetwork]:
        return await self.get_list("/v1/networks", PodNetwork, timeout=timeout)

    async def check_pod_network(self, pod_id: str, *, timeout: float | None = 60.0) -> None:
        """CNI CHECK with the configuration the ADD used."""
        await self.post_model(f"/v1/networks/{quote(pod_id, safe='')}/check", None, None,
                              timeout=timeout)

    async def remove_pod_network(self, pod_id: str, *, timeout: float | None = 120.0) -> None:
        """CNI DEL (reverse order) and remove the netns; a missing one is success."""
        await self.delete(f"/v1/networks/{quote(pod_id, safe='')}", timeout=timeout)

    async def list_namespaces(self, *, timeout: float | None = 10.0) -> list[NetworkNamespace]:
        """crib's pinned namespaces under netns_dir (operators)."""
        return await self.get_list("/v1/namespaces", NetworkNamespace, timeout=timeout)

    async def get_config(self, *, timeout: float | None = 10.0) -> CniConfigView:
        """The CNI configuration in force and whether it is usable (operators)."""
        return await self.get_model("/v1/config", CniConfigView, timeout=timeout)

    async def gc(self, *, timeout: float | None = 120.0) -> GcReport:
        """Remove orphan namespaces; CNI GC where plugins speak CNI 1.1."""
        result = await self.post_model("/v1/gc", None, GcReport, timeout=timeout)
        assert result is not None
        return result
