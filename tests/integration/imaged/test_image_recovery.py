"""Recovery repairs rather than discards (issue 11): an image whose unpacked layers are all
there is kept when blobs are gone, marked, and fetched again; an image that cannot be kept
is reported (REST, health) over restarts until an operator clears it or pulls it again."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from crib_common.models.imaged import SnapshotCreate
from tests.integration.imaged.conftest import start_imaged, stop_imaged
from tests.support.images import Entry, Image, Layer
from tests.support.registry import StaticRegistry

pytestmark = pytest.mark.integration


def _image(tag: str) -> Image:
    return Image([Layer.from_entries([Entry.file("base", "shared base")]),
                  Layer.from_entries([Entry.file("top", tag)])])


def _serve(static: StaticRegistry, repo: str, tag: str, image: Image) -> str:
    static.add_image(repo, tag, image.manifest, image.manifest_media_type,
                     [image.config_blob] + [lay.blob for lay in image.layers])
    return f"{static.host}/{repo}:{tag}"


def _blob(root: Path, digest: str) -> Path:
    return root / "blobs/sha256" / digest.removeprefix("sha256:")


async def test_blobs_gone_image_kept_marked_then_fetched(imaged_root: Path) -> None:
    image = _image("a")
    with StaticRegistry() as static:
        ref = _serve(static, "crib/keep", "v1", image)
        d = await start_imaged(imaged_root)
        try:
            assert await d.pull(ref) == image.config_digest
        finally:
            await stop_imaged(d)
        gone = [image.layers[1].digest, image.config_digest, image.manifest_digest]
        for digest in gone:
            _blob(d.root, digest).unlink()
        # The registry cannot serve them for now: the marks stay.
        saved = {p: static.routes.pop(p) for p in list(static.routes)
                 if "/blobs/" in p or "/manifests/" in p}
        d = await start_imaged(imaged_root)
        try:
            health = await d.client.health()
            recovery = health["details"]["recovery"]
            assert recovery["images_repaired"] == 1 and recovery["blobs_marked_missing"] == 3
            assert recovery.get("images_dropped", 0) == 0
            report = await d.client.recovery()
            assert report.dropped == []
            [incomplete] = report.incomplete
            assert incomplete.id == image.config_digest and sorted(incomplete.missing) == \
                sorted(gone)
            assert health["details"]["images_missing_blobs"] == [image.config_digest]
            # Kept and usable: its layers are unpacked.
            assert [i.id for i in (await d.list()).images] == [image.config_digest]
            snap = await d.client.create_snapshot(SnapshotCreate(key="c1", image=ref))
            assert len(snap.mounts[0].options[0].split(":")) == 2
            # The next pull fetches what is missing and clears the marks.
            static.routes.update(saved)
            assert await d.pull(ref) == image.config_digest
            assert all(_blob(d.root, digest).is_file() for digest in gone)
            assert (await d.client.recovery()).incomplete == []
        finally:
            await stop_imaged(d)
        # Gone again: this time the repair imaged starts once ready fetches them.
        for digest in gone:
            _blob(d.root, digest).unlink()
        d = await start_imaged(imaged_root)
        try:
            assert (await d.client.health())["details"]["recovery"]["blobs_marked_missing"] == 3
            for _ in range(100):
                if not (await d.client.recovery()).incomplete:
                    break
                await asyncio.sleep(0.05)
            assert (await d.client.recovery()).incomplete == []
            assert all(_blob(d.root, digest).is_file() for digest in gone)
            assert (await d.status(ref)).image.repo_tags == [ref]
        finally:
            await stop_imaged(d)


async def test_layer_gone_image_dropped_and_reported(imaged_root: Path) -> None:
    kept, lost = _image("kept"), _image("lost")
    with StaticRegistry() as static:
        kept_ref = _serve(static, "crib/kept", "v1", kept)
        lost_ref = _serve(static, "crib/lost", "v1", lost)
        d = await start_imaged(imaged_root)
        try:
            await d.pull(kept_ref)
            await d.pull(lost_ref)
        finally:
            await stop_imaged(d)
        # The layer only `lost` has goes (its shared base stays for `kept`).
        shutil.rmtree(d.root / "layers" / lost.layers[1].diff_id.removeprefix("sha256:"))
        for restart in range(2):
            d = await start_imaged(imaged_root)
            try:
                listed = [i.id for i in (await d.list()).images]
                assert listed == [kept.config_digest], restart
                report = await d.client.recovery()
                [dropped] = report.dropped
                assert dropped.id == lost.config_digest and dropped.repo_tags == [lost_ref]
                assert lost.layers[1].diff_id in dropped.missing
                assert "unpacked layer" in dropped.reason
                assert (await d.client.health())["details"]["images_dropped"] == \
                    [lost.config_digest]
                # Reported at the restart that dropped it, and kept for the next ones.
                assert report.counts.get("images_dropped", 0) == (1 if restart == 0 else 0)
            finally:
                await stop_imaged(d)
        d = await start_imaged(imaged_root)
        try:
            # Pulled again: whole, and the report has been answered.
            assert await d.pull(lost_ref) == lost.config_digest
            assert (await d.client.recovery()).dropped == []
            # Dropped once more; this time the operator clears the report.
        finally:
            await stop_imaged(d)
        shutil.rmtree(d.root / "layers" / lost.layers[1].diff_id.removeprefix("sha256:"))
        d = await start_imaged(imaged_root)
        try:
            assert [x.id for x in (await d.client.recovery()).dropped] == [lost.config_digest]
            assert (await d.client.clear_dropped()).dropped == []
        finally:
            await stop_imaged(d)
        d = await start_imaged(imaged_root)
        try:
            assert (await d.client.recovery()).dropped == []
        finally:
            await stop_imaged(d)
