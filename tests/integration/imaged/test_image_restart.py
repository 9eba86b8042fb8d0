"""kill -9 of the real crib-imaged during a pull and during a remove: after a restart the
store is consistent (no partial blob, no half layer, records match directories) and the
pull completes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crib_common.clients.imaged import ImagedClient
from crib_common.cri.runtime.v1 import (
    ImageSpec,
    ListImagesRequest,
    ListImagesResponse,
    PullImageRequest,
    PullImageResponse,
    RemoveImageRequest,
)
from crib_common.models.imaged import SnapshotCreate
from tests.support.images import Entry, Image, Layer, digest_of_file, push_image
from tests.support.registry import Registry, StaticRegistry
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

SVC = "/runtime.v1.ImageService/"


@pytest.fixture
def node() -> Iterator[Stack]:
    with Stack.running(("imaged",)) as stack:
        yield stack


def _root(stack: Stack) -> Path:
    return stack.root / "lib/imaged"


async def _pull(client: ImagedClient, ref: str, timeout: float = 60) -> str:
    raw = await client.call_cri(SVC + "PullImage",
                                bytes(PullImageRequest(image=ImageSpec(image=ref))),
                                timeout=timeout)
    return str(PullImageResponse().parse(raw).image_ref)


async def _list(client: ImagedClient) -> ListImagesResponse:
    raw = await client.call_cri(SVC + "ListImages", bytes(ListImagesRequest()), timeout=10)
    return ListImagesResponse().parse(raw)


def _assert_consistent(root: Path, kept: dict[str, int] | None = None) -> None:
    """Nothing partial survives a restart but the resumable downloads in `kept` (digest
    hex -> bytes), each with its record; every stored blob matches its name."""
    expected = {f"{h}.part" for h in kept or {}} | {f"{h}.ref" for h in kept or {}}
    assert {p.name for p in (root / "ingest").iterdir()} == expected
    for hexd, size in (kept or {}).items():
        assert (root / "ingest" / f"{hexd}.part").stat().st_size == size
    assert not [p for p in (root / "layers").iterdir() if p.name.startswith(".")]
    for blob in (root / "blobs/sha256").iterdir():
        assert digest_of_file(blob) == f"sha256:{blob.name}"
    for link in (root / "l").iterdir():
        if link.is_symlink():
            assert link.resolve().is_dir(), f"dangling layer link {link}"


def _part_sizes(root: Path) -> dict[str, int]:
    """Digest hex -> bytes of each resumable download (`<hex>.part`; manifests and
    configs use private names and are not resumed) in the ingest area (committed ones
    vanish while we look)."""
    sizes: dict[str, int] = {}
    for part in (root / "ingest").glob("[0-9a-f]*[0-9a-f].part"):
        if len(part.name) != 64 + len(".part"):
            continue
        with contextlib.suppress(FileNotFoundError):
            sizes[part.name.removesuffix(".part")] = part.stat().st_size
    return sizes


def _big_image(n_layers: int, size: int) -> Image:
    layers = []
    for i in range(n_layers):
        data = (bytes([i]) * 1024 + os.urandom(1024)) * (size // 2048)
        layers.append(Layer.from_entries(
            [Entry.file(f"layer{i}/f{j}", data[j::7]) for j in range(7)], "gzip"))
    return Image(layers)


async def test_kill_during_pull_then_pull_completes(node: Stack) -> None:
    image = _big_image(3, 1 << 20)
    with StaticRegistry() as static:
        blobs = [image.config_blob] + [layer.blob for layer in image.layers]
        static.add_image("crib/slow", "v1", image.manifest, image.manifest_media_type, blobs)
        # The last layer dribbles in, so the kill lands mid-download.
        slow = image.layers[-1]
        static.throttle[f"/v2/crib/slow/blobs/{slow.digest}"] = len(slow.blob) // 4
        ref = f"{static.host}/crib/slow:v1"
        root = _root(node)
        client = ImagedClient(node.socket("imaged"))
        pull = asyncio.ensure_future(_pull(client, ref))
        # Kill once the throttled layer itself is part-way (a fast layer's bytes alone
        # would not prove a Range resume: under load the slow one may not have started).
        slow_hex = slow.digest.removeprefix("sha256:")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if _part_sizes(root).get(slow_hex, 0) > 0:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("no download in progress to interrupt")
        node.kill("imaged")
        with contextlib.suppress(Exception):
            await pull
        await client.close()
        parts = _part_sizes(root)
        assert any(parts.values()), "the kill should leave a partial file"
        node.start_one("imaged")
        # The partial downloads are kept (each has its record) for the next pull.
        _assert_consistent(root, parts)
        client = ImagedClient(node.socket("imaged"))
        try:
            assert (await client.health())["details"]["recovery"]["ingest_kept"] == len(parts)
            assert (await _list(client)).images == []
            static.throttle.clear()
            static.headers.clear()
            assert await _pull(client, ref) == image.config_digest
            # Each kept download resumed from its last byte, and only the rest was sent
            # (none of it when the kill came between the last byte and the rename).
            sizes = {lay.digest.removeprefix("sha256:"): len(lay.blob)
                     for lay in image.layers}
            # The throttled layer was cut mid-way: at least one real Range resume.
            assert any(0 < size < sizes[h] for h, size in parts.items()), parts
            for hexd, size in parts.items():
                seen = [h.get("range", "") for p, h in static.headers
                        if p == f"/v2/crib/slow/blobs/sha256:{hexd}"]
                want = [] if size == sizes[hexd] else [f"bytes={size}-"] if size else [""]
                assert seen == want, (hexd, size, sizes[hexd], seen)
            _assert_consistent(root)
            assert [i.id for i in (await _list(client)).images] == [image.config_digest]
            snap = await client.create_snapshot(SnapshotCreate(key="after-kill", image=ref))
            assert len(snap.mounts[0].options[0].split(":")) == 3
        finally:
            await client.close()


def _many_files_image(n_layers: int, files: int) -> Image:
    return Image([Layer.from_entries([Entry.file(f"l{i}/d{j % 20}/f{j}", f"{i}-{j}")
                                      for j in range(files)]) for i in range(n_layers)])


async def test_kill_during_remove_then_consistent(node: Stack, registry: Registry) -> None:
    # Many small files: removing the layers takes long enough for the kill to land in it.
    image = _many_files_image(6, 800)
    pushed = push_image(registry, "crib-test/remove-kill", "v1", image)
    root = _root(node)
    client = ImagedClient(node.socket("imaged"))
    try:
        image_id = await _pull(client, pushed.reference)
        remove = asyncio.ensure_future(client.call_cri(
            SVC + "RemoveImage", bytes(RemoveImageRequest(image=ImageSpec(image=image_id))),
            timeout=10))
        # Let the remove get under way (record deleted, layers being renamed away).
        await asyncio.sleep(0.05)
        node.kill("imaged")
        with contextlib.suppress(Exception):
            await remove
    finally:
        await client.close()
    half_removed = [p.name for p in (root / "layers").iterdir() if p.name.startswith(".rm-")]
    node.start_one("imaged")
    _assert_consistent(root)
    client = ImagedClient(node.socket("imaged"))
    try:
        health = await client.health()
        assert health["details"]["recovery"].get("layer_dirs_swept", 0) == len(half_removed)
        listed = [i.id for i in (await _list(client)).images]
        layer_dirs = [p for p in (root / "layers").iterdir()]
        if listed:
            # The remove did not commit: the image is whole.
            assert listed == [image_id] and len(layer_dirs) == 6
        else:
            assert layer_dirs == []
            assert list((root / "blobs/sha256").iterdir()) == []
        assert await _pull(client, pushed.reference) == image_id
        await client.create_snapshot(SnapshotCreate(key="k", image=image_id))
        await client.remove_snapshot("k")
    finally:
        await client.close()
