"""Typed client for imaged's HTTP API (used by runtimed and the CLI)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aiohttp

from ..client import DaemonClient, _map_transport_errors
from ..errors import error_from_body
from ..models.imaged import (
    ImageFsUsage,
    ImageInfo,
    PruneResult,
    PullEvent,
    PullInfo,
    PullRequest,
    PullWatchEvent,
    RecoveryReport,
    RemoveResult,
    Snapshot,
    SnapshotCreate,
    SnapshotUsage,
)

__all__ = ["ImagedClient", "STREAM_SILENCE"]

# Seconds without a byte on a progress stream before the client gives up on imaged (which
# sends an empty line after 15 s of silence: `imaged.api.pulls.KEEPALIVE`).
STREAM_SILENCE = 60.0


class ImagedClient(DaemonClient):
    def __init__(self, socket: Path, **kwargs: float) -> None:
        super().__init__("imaged", socket, **kwargs)

    async def __aenter__(self) -> ImagedClient:
        return self

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

    # ------------------------------------------------------------ operator calls
    async def list_images(self, *, timeout: float | None = 10.0) -> list[ImageInfo]:
        return await self.get_list("/v1/images", ImageInfo, timeout=timeout)

    async def remove_image(self, ref: str, *, all_names: bool = False,
                           timeout: float | None = 60.0) -> RemoveResult:
        """Remove an image; a tag only untags while the image keeps other tags, unless
        `all_names`. A missing image answers an empty result."""
        params = {"ref": ref, "all": "1" if all_names else "0"}
        _, body = await self.request_bytes("DELETE", "/v1/images", params=params,
                                           timeout=timeout)
        return RemoveResult.model_validate_json(body)

    async def prune(self, *, all_images: bool = False,
                    timeout: float | None = 120.0) -> PruneResult:
        _, body = await self.request_bytes(
            "POST", "/v1/images/prune", params={"all": "1" if all_images else "0"},
            timeout=timeout)
        return PruneResult.model_validate_json(body)

    async def recovery(self, *, timeout: float | None = 10.0) -> RecoveryReport:
        """What the last recovery did, the images it dropped and those missing blobs."""
        return await self.get_model("/v1/recovery", RecoveryReport, timeout=timeout)

    async def clear_dropped(self, *, timeout: float | None = 10.0) -> RecoveryReport:
        """Forget the dropped images recovery reported; answers the report after."""
        _, body = await self.request_bytes("DELETE", "/v1/recovery/dropped", timeout=timeout)
        return RecoveryReport.model_validate_json(body)

    async def image_fs(self, *, timeout: float | None = 30.0) -> ImageFsUsage:
        return await self.get_model("/v1/imagefs", ImageFsUsage, timeout=timeout)

    async def pull(self, request: PullRequest, *,
                   timeout: float | None = None) -> AsyncIterator[PullEvent]:
        """Pull, yielding progress events; the last one has status "done" or "error".
        No total limit by default: imaged fails a pull that stops moving
        (image_pull_progress_timeout), and the stream is never silent for long."""
        async for line in self._stream("POST", "/v1/images/pull", timeout,
                                       request.model_dump_json().encode()):
            yield PullEvent.model_validate_json(line)

    async def list_pulls(self, *, recent: bool = False,
                         timeout: float | None = 10.0) -> list[PullInfo]:
        """The pulls in flight (and with `recent` the recently finished), oldest first."""
        return await self.get_list("/v1/pulls", PullInfo,
                                   params={"recent": "1"} if recent else None, timeout=timeout)

    async def get_pull(self, pull_id: str, *, timeout: float | None = 10.0) -> PullInfo:
        """One pull, in flight or recently finished (NotFound otherwise)."""
        return await self.get_model(f"/v1/pulls/{quote(pull_id, safe='')}", PullInfo,
                                    timeout=timeout)

    async def watch_pulls(self, pull_id: str | None = None, *, until_idle: bool = False,
                          timeout: float | None = None) -> AsyncIterator[PullWatchEvent]:
        """Progress of every pull (or of `pull_id`, ending with its outcome); with
        `until_idle` the stream ends once no pull is in flight."""
        if pull_id is not None:
            path = f"/v1/pulls/{quote(pull_id, safe='')}/events"
        else:
            path = "/v1/pulls/events" + ("?until_idle=1" if until_idle else "")
        async for line in self._stream("GET", path, timeout, None):
            yield PullWatchEvent.model_validate_json(line)

    async def _stream(self, method: str, path: str, timeout: float | None,
                      body: bytes | None) -> AsyncIterator[bytes]:
        """The non-empty lines of an NDJSON answer. A stream silent for `STREAM_SILENCE`
        seconds (imaged writes at least an empty line every 15 s) means imaged is gone."""
        headers = self._headers(timeout, {"Content-Type": "application/json"} if body else None)
        with _map_transport_errors(self.name, self.socket, timeout):
            async with self._get_session().request(
                method, path, data=body, headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=self.connect_timeout,
                                              sock_read=STREAM_SILENCE),
            ) as resp:
                if resp.status >= 400:
                    raise error_from_body(resp.status, await resp.read())
                async for line in resp.content:
                    if line.strip():
                        yield line
