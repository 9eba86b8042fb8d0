"""PullImage/ListImages/ImageStatus/RemoveImage/ImageFsInfo against a real registry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.imaged.conftest import Imaged

pytestmark = pytest.mark.integration


async def test_pull_busybox_and_status(imaged: Imaged, busybox_image: str,
                                       busybox_pushed: object) -> None:
    image_id = await imaged.pull(busybox_image)
    assert image_id == busybox_pushed.config_digest  # type: ignore[attr-defined]
    listed = await imaged.list()
    assert [i.id for i in listed.images] == [image_id]
    img = listed.images[0]
    assert img.repo_tags == [busybox_image]
    assert img.repo_digests == [
        busybox_image.rsplit(":", 1)[0] + "@" + busybox_pushed.manifest_digest]  # type: ignore[attr-defined]
    assert img.size > 0
    status = await imaged.status(busybox_image, verbose=True)
    assert status.image.id == image_id
    info = json.loads(status.info["info"])
    assert info["imageSpec"]["config"]["Cmd"] == ["/bin/sh"]
    # By ID, by ID prefix and by digest reference.
    for ref in (image_id, image_id[7:19], img.repo_digests[0]):
        assert (await imaged.status(ref)).image.id == image_id
    # Unknown image: empty response, not an error (api.proto).
    missing = await imaged.status(f"{busybox_image.rsplit(':', 1)[0]}:nope")
    assert not missing.image.id
    fs = (await imaged.fs_info()).image_filesystems[0]
    assert fs.used_bytes.value > 1_000_000 and fs.inodes_used.value > 20
    # The mountpoint of the filesystem that holds the store (as the kubelet compares them).
    mountpoint = Path(fs.fs_id.mountpoint)
    assert imaged.root.resolve().is_relative_to(mountpoint)
    assert os.stat(mountpoint).st_dev == os.stat(imaged.root).st_dev
    assert fs.timestamp > 0
    # The unpacked layer holds real executables.
    snap_mounts = await imaged.client.create_snapshot(
        __import__("crib_common.models.imaged", fromlist=["SnapshotCreate"]).SnapshotCreate(
            key="c1", image=busybox_image))
    lower = snap_mounts.mounts[0].options[0].removeprefix("lowerdir=").split(":")[0]
    sh = Path(lower) / "bin/sh"
    assert sh.is_file() and os.stat(sh).st_nlink > 100
    assert os.stat(Path(lower) / "home/crib").st_uid == 1000
    await imaged.client.remove_snapshot("c1")
    await imaged.client.remove_snapshot("c1")  # idempotent


async def test_remove_is_idempotent_and_collects(imaged: Imaged, busybox_image: str) -> None:
    image_id = await imaged.pull(busybox_image)
    await imaged.remove(busybox_image)
    assert (await imaged.list()).images == []
    assert not (imaged.root / "blobs/sha256").exists() or not any(
        (imaged.root / "blobs/sha256").iterdir())
    assert not any(p for p in (imaged.root / "layers").iterdir())
    await imaged.remove(busybox_image)
    await imaged.remove(image_id)
