"""Store behaviour: concurrent pulls share work, many-layer snapshots fit one page,
mirrors from config, recovery of leftovers at start, health."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from crib_common.cri.runtime.v1 import ImageSpec, PullImageRequest, PullImageResponse
from crib_common.models.imaged import SnapshotCreate
from tests.integration.imaged.conftest import Imaged, start_imaged, stop_imaged
from tests.support.images import Entry, Image, Layer, push_image
from tests.support.registry import Registry, StaticRegistry

pytestmark = pytest.mark.integration


async def test_concurrent_pulls_download_once(imaged: Imaged) -> None:
    layers = [Layer.from_entries([Entry.file(f"f{i}", os.urandom(200_000))]) for i in range(3)]
    image = Image(layers)
    with StaticRegistry() as static:
        static.add_image("crib/twice", "v1", image.manifest, image.manifest_media_type,
                         [image.config_blob] + [lay.blob for lay in layers])
        for lay in layers:
            static.throttle[f"/v2/crib/twice/blobs/{lay.digest}"] = 1_000_000
        ref = f"{static.host}/crib/twice:v1"
        ids = await asyncio.gather(imaged.pull(ref), imaged.pull(ref), imaged.pull(ref))
        assert set(ids) == {image.config_digest}
        for lay in layers:
            assert static.requests.count(f"/v2/crib/twice/blobs/{lay.digest}") == 1
    assert len(list((imaged.root / "layers").iterdir())) == 3
    assert len((await imaged.list()).images) == 1


async def test_many_layers_fit_one_page(imaged: Imaged, registry: Registry) -> None:
    layers = [Layer.from_entries([Entry.file(f"l{i}", str(i))], "none") for i in range(100)]
    pushed = push_image(registry, "crib-test/many", "v1", Image(layers))
    await imaged.pull(pushed.reference)
    snap = await imaged.client.create_snapshot(SnapshotCreate(key="many",
                                                              image=pushed.reference))
    options = ",".join(snap.mounts[0].options)
    assert len(options) < 4096
    lowers = snap.mounts[0].options[0].removeprefix("lowerdir=").split(":")
    assert len(lowers) == 100
    assert (Path(lowers[0]) / "l99").read_text() == "99"
    assert (Path(lowers[-1]) / "l0").read_text() == "0"
    listed = await imaged.client.list_snapshots()
    assert [s.key for s in listed] == ["many"]
    got = await imaged.client.get_snapshot("many")
    assert got.mounts == snap.mounts and got.image_id == snap.image_id
    with pytest.raises(Exception, match="already exists"):
        await imaged.client.create_snapshot(SnapshotCreate(key="many", image=pushed.reference))
    with pytest.raises(Exception, match="invalid snapshot key"):
        await imaged.client.create_snapshot(SnapshotCreate(key="../x", image=pushed.reference))
    with pytest.raises(Exception, match="not found"):
        await imaged.client.create_snapshot(SnapshotCreate(key="k2", image="nope/none:v9"))


async def test_mirror_from_settings(imaged_root: Path, registry: Registry,
                                    busybox_pushed: object) -> None:
    d = await start_imaged(imaged_root, registries={
        "mirrored.crib.test": {"mirrors": [f"http://{registry.host}"]}})
    try:
        ref = "mirrored.crib.test/crib-test/busybox:latest"
        assert await d.pull(ref) == busybox_pushed.config_digest  # type: ignore[attr-defined]
        assert (await d.status(ref)).image.repo_tags == [ref]
    finally:
        await stop_imaged(d)


async def test_recovery_sweeps_leftovers(imaged_root: Path, registry: Registry) -> None:
    pushed = push_image(registry, "crib-test/recover", "v1",
                        Image([Layer.from_entries([Entry.file("a", "a")])]))
    d = await start_imaged(imaged_root)
    image_id = await d.pull(pushed.reference)
    await d.client.create_snapshot(SnapshotCreate(key="keep", image=image_id))
    await stop_imaged(d)
    root = d.root
    (root / "ingest/deadbeef.1234.part").write_bytes(b"partial")
    (root / "layers/.tmp-abc-1234/diff").mkdir(parents=True)
    (root / ("layers/" + "e" * 64 + "/diff")).mkdir(parents=True)  # no record
    (root / "snapshots/orphan/fs").mkdir(parents=True)
    (root / "blobs/sha256" / ("f" * 64)).write_bytes(b"unreferenced")
    d = await start_imaged(imaged_root)
    try:
        health = await d.client.health()
        assert health["ready"] is True
        recovery = health["details"]["recovery"]
        assert recovery["ingest_swept"] == 1 and recovery["layer_dirs_swept"] == 1
        assert recovery["layer_dirs_orphaned"] == 1
        assert recovery["snapshot_dirs_orphaned"] == 1 and recovery["blobs_collected"] == 1
        assert list((root / "ingest").iterdir()) == []
        assert not (root / "snapshots/orphan").exists()
        assert (await d.status(pushed.reference)).image.id == image_id
        assert [s.key for s in await d.client.list_snapshots()] == ["keep"]
        await d.client.remove_snapshot("keep")
    finally:
        await stop_imaged(d)


async def test_more_layers_with_short_link_dir(imaged_root: Path, registry: Registry) -> None:
    layers = [Layer.from_entries([Entry.file(f"l{i}", str(i))], "none") for i in range(160)]
    pushed = push_image(registry, "crib-test/more", "v1", Image(layers))
    short = Path("/tmp") / f"cl{imaged_root.name[-4:]}"
    d = await start_imaged(imaged_root, link_dir=short)
    try:
        await d.pull(pushed.reference)
        snap = await d.client.create_snapshot(SnapshotCreate(key="more",
                                                             image=pushed.reference))
        assert len(",".join(snap.mounts[0].options)) < 4096
        lowers = snap.mounts[0].options[0].removeprefix("lowerdir=").split(":")
        assert len(lowers) == 160 and all(p.startswith(str(short)) for p in lowers)
        assert (Path(lowers[0]) / "l159").read_text() == "159"
    finally:
        await stop_imaged(d)
        import shutil
        shutil.rmtree(short, ignore_errors=True)
    d = await start_imaged(imaged_root)  # the default, longer link dir: a clear refusal
    try:
        with pytest.raises(Exception, match="exceed one page.*link_dir"):
            await d.client.create_snapshot(SnapshotCreate(key="m2", image=pushed.reference))
    finally:
        await stop_imaged(d)


async def test_deadline_cancels_pull_cleanly(imaged: Imaged) -> None:
    layers = [Layer.from_entries([Entry.file(f"f{i}", os.urandom(300_000))]) for i in range(2)]
    image = Image(layers)
    with StaticRegistry() as static:
        static.add_image("crib/late", "v1", image.manifest, image.manifest_media_type,
                         [image.config_blob] + [lay.blob for lay in layers])
        static.throttle[f"/v2/crib/late/blobs/{layers[1].digest}"] = 100_000
        ref = f"{static.host}/crib/late:v1"
        before = imaged.files()
        with pytest.raises(Exception, match="did not finish within|did not answer"):
            # The kubelet's deadline: the daemon cancels the pull when it passes.
            await imaged.cri("PullImage", PullImageRequest(image=ImageSpec(image=ref)),
                             PullImageResponse, timeout=0.5)
        for _ in range(100):
            if imaged.files() == before:
                break
            await asyncio.sleep(0.05)
        assert imaged.files() == before
        static.throttle.clear()
        assert await imaged.pull(ref) == image.config_digest


async def test_pause_image_is_pinned(imaged_root: Path, registry: Registry) -> None:
    pushed = push_image(registry, "crib-test/pause", "3.9",
                        Image([Layer.from_entries([Entry.file("pause", "p")])]))
    other = push_image(registry, "crib-test/other", "v1",
                       Image([Layer.from_entries([Entry.file("other", "o")])]))
    d = await start_imaged(imaged_root, runtimed={"pause_image": pushed.reference})
    try:
        await d.pull(pushed.reference)
        await d.pull(other.reference)
        assert (await d.status(pushed.reference)).image.pinned is True
        assert (await d.status(other.reference)).image.pinned is False
    finally:
        await stop_imaged(d)
