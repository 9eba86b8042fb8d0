"""Typed client for imaged's HTTP API (used by runtimed and the CLI)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from ..client import DaemonClient
from ..models.imaged import ImageInfo, Snapshot, SnapshotCreate, SnapshotUsage

__all__ = ["ImagedClient"]


class ImagedClient(DaemonClient):
    def __init__(self, socket: Path, **kwargs: float) -> None:
        super().__init__("imaged", socket, **kwargs)  # type: ignore[arg-type]

    async def resolve_image(self, ref: str, *, timeout: float | None = 10.0) -> ImageInfo:
        """The stored image a reference, ID or unique ID prefix names (NotFound if none)."""
        return await self.get_model("/v1/images/resolve", ImageInfo, params={"ref": ref},
                                    timeout=timeout)

    async def create_snapshot(self, request: SnapshotCreate, *,
                              timeout: float | None = 60.0) -> Snapshot:
        """Prepare a writable snapshot; AlreadyExists if `key` is taken."""
        result = await self.post_model("/v1/snapshots", request, Snapshot, timeout=timeout)
        assert result is not None
        return result

    async def get_snapshot(self, key: str, *, timeout: float | None = 10.0) -> Snapshot:
        return await self.get_model(f"/v1/snapshots/{quote(key, safe='')}", Snapshot,
                                    timeout=timeout)

    async def list_snapshots(self, *, timeout: float | None = 10.0) -> list[Snapshot]:
        return await self.get_list("/v1/snapshots", Snapshot, timeout=timeout)

    async def snapshot_usage(self, key: str, *, timeout: float | None = 10.0) -> SnapshotUsage:
        return await self.get_model(f"/v1/snapshots/{quote(key, safe='')}/usage",
                                    SnapshotUsage, timeout=timeout)

    async def remove_snapshot(self, key: str, *, timeout: float | None = 60.0) -> None:
        """Remove a snapshot; a missing one is success."""
        await self.delete(f"/v1/snapshots/{quote(key, safe='')}", timeout=timeout)
