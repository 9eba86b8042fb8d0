"""An in-process imaged on a private root and socket, driven through its HTTP contract.

`imaged` yields an `Imaged` with CRI helpers (the same protobuf-over-HTTP calls the
gateway forwards) and the typed `ImagedClient` runtimed uses.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from crib_common.clients.imaged import ImagedClient
from crib_common.cri.runtime.v1 import (
    AuthConfig,
    ImageFilter,
    ImageFsInfoRequest,
    ImageFsInfoResponse,
    ImageSpec,
    ImageStatusRequest,
    ImageStatusResponse,
    ListImagesRequest,
    ListImagesResponse,
    PullImageRequest,
    PullImageResponse,
    RemoveImageRequest,
    RemoveImageResponse,
)
from crib_common.server import serve_unix
from crib_common.settings import CribSettings
from imaged.app import create_app

SVC = "/runtime.v1.ImageService/"


@dataclass
class Imaged:
    root: Path
    socket: Path
    client: ImagedClient
    runner: web.AppRunner | None = None

    async def cri(self, method: str, request: Any, reply_type: type[Any],
                  timeout: float = 120) -> Any:
        raw = await self.client.call_cri(SVC + method, bytes(request), timeout=timeout)
        return reply_type().parse(raw)

    async def pull(self, ref: str, auth: AuthConfig | None = None) -> str:
        reply = await self.cri("PullImage", PullImageRequest(image=ImageSpec(image=ref),
                                                             auth=auth), PullImageResponse)
        return str(reply.image_ref)

    async def list(self, ref: str = "") -> ListImagesResponse:
        req = ListImagesRequest(filter=ImageFilter(image=ImageSpec(image=ref))) if ref \
            else ListImagesRequest()
        return await self.cri("ListImages", req, ListImagesResponse)

    async def status(self, ref: str, verbose: bool = False) -> ImageStatusResponse:
        return await self.cri("ImageStatus", ImageStatusRequest(
            image=ImageSpec(image=ref), verbose=verbose), ImageStatusResponse)

    async def remove(self, ref: str) -> None:
        await self.cri("RemoveImage", RemoveImageRequest(image=ImageSpec(image=ref)),
                       RemoveImageResponse)

    async def fs_info(self) -> ImageFsInfoResponse:
        return await self.cri("ImageFsInfo", ImageFsInfoRequest(), ImageFsInfoResponse)

    def files(self) -> set[str]:
        """Every path under the store except the database (to prove "nothing changed")."""
        return {str(p.relative_to(self.root)) for p in self.root.rglob("*")
                if not p.name.startswith("state.db")
                and not (p.is_dir() and not p.is_symlink() and not any(p.iterdir()))}


async def start_imaged(root: Path, runtimed: dict[str, Any] | None = None,
                       **imaged_settings: Any) -> Imaged:
    """An in-process imaged on `root` (store, run dir, socket), with settings overrides."""
    settings = CribSettings(imaged={"root": root / "store", "run_dir": root / "run",
                                    "socket": root / "imaged.sock", **imaged_settings},
                            runtimed=runtimed or {})
    app = create_app(settings)
    runner = await serve_unix(app, root / "imaged.sock")
    return Imaged(root / "store", root / "imaged.sock",
                  ImagedClient(root / "imaged.sock"), runner)


async def stop_imaged(d: Imaged) -> None:
    await d.client.close()
    if d.runner is not None:
        await d.runner.cleanup()


@pytest.fixture
async def imaged_root() -> AsyncIterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="crib-im-", dir="/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def imaged(imaged_root: Path) -> AsyncIterator[Imaged]:
    d = await start_imaged(imaged_root)
    try:
        yield d
    finally:
        await stop_imaged(d)
