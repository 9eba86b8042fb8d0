"""ImageStore: the invariant (a record names only blobs on disk, or says which are not and
why) holds at commit; garbage collection spares what a lease or a snapshot holds; recovery
marks absent blobs of an image whose layers are unpacked, and drops (and reports) one
whose layer is gone."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from crib_common.errors import Internal
from imaged.store.images import ImageStore
from imaged.store.records import ImageLayer, ImageRecord, LayerRecord
from imaged.store.recovery import MISSING_AT_RECOVERY


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer_tar(name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(name)
        tar.addfile(info, io.BytesIO(name.encode()))
    return buf.getvalue()


def _stored_image(store: ImageStore, name: str) -> ImageRecord:
    """Blobs committed and the layer unpacked, as a pull leaves them; not yet recorded."""
    tar = _layer_tar(name)
    diff_id = _digest(tar)
    store.content.put(diff_id, tar)  # stored uncompressed: blob digest == diff_id
    config = f'{{"name": "{name}"}}'.encode()
    config_digest = _digest(config)
    store.content.put(config_digest, config)
    manifest = f'{{"config": "{config_digest}"}}'.encode()
    manifest_digest = _digest(manifest)
    store.content.put(manifest_digest, manifest)
    if diff_id not in store.layer_records:
        link = store.layers.new_link()
        stats = store.layers.unpack(store.content.path_of(diff_id), "none", diff_id, link)
        store.put_layer(LayerRecord(diff_id=diff_id, link=link, bytes=stats.bytes))
    return ImageRecord(
        id=config_digest, manifest_digest=manifest_digest,
        content=sorted({config_digest, manifest_digest, diff_id}),
        layers=[ImageLayer(diff_id=diff_id, digest=diff_id, size=len(tar),
                           media_type="application/vnd.oci.image.layer.v1.tar")])


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    s = ImageStore(tmp_path / "store")
    s.recover()
    return s


async def test_commit_refuses_a_record_naming_an_absent_blob(store: ImageStore) -> None:
    img = _stored_image(store, "a")
    store.content.delete(img.layers[0].digest)
    with pytest.raises(Internal, match="blobs not on disk"):
        await store.commit_image(img, "example.com/a:v1", "")
    assert store.images == {} and store.state.list("image", ImageRecord) == []


async def test_commit_keeps_marks_only_while_the_blob_is_absent(store: ImageStore) -> None:
    img = _stored_image(store, "a")
    stored = await store.commit_image(img, "example.com/a:v1", "")
    marked = stored.model_copy(deep=True, update={"missing": {img.manifest_digest: "why"}})
    store.state.put("image", img.id, marked)
    store.images[img.id] = marked
    store.content.delete(img.manifest_digest)
    # Another pull that did not touch the manifest: the mark stays, nothing is refused.
    again = await store.commit_image(img.model_copy(deep=True), None, "")
    assert again.missing == {img.manifest_digest: "why"}
    # Fetched again: the mark goes.
    store.content.put(img.manifest_digest, f'{{"config": "{img.id}"}}'.encode())
    assert (await store.commit_image(img.model_copy(deep=True), None, "")).missing == {}


async def test_collect_spares_leases_and_snapshots(store: ImageStore) -> None:
    img = await store.commit_image(_stored_image(store, "a"), "example.com/a:v1", "")
    diff_id = img.layers[0].diff_id
    await store.prepare_snapshot("c1", img.id, {})
    with store.lease(img.id):
        await store.remove_image(img.id)
        # The lease keeps the config blob; the snapshot keeps the layer, not its blob.
        assert store.content.has(img.id)
        assert not store.content.has(img.layers[0].digest)
    assert store.layer_exists(diff_id) and store.layers.exists(diff_id)
    await store.collect()
    assert not store.content.has(img.id)
    await store.remove_snapshot("c1")
    assert not store.layer_exists(diff_id) and not store.layers.exists(diff_id)


async def test_recovery_marks_absent_blobs_and_drops_lost_layers(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    store.recover()
    kept = await store.commit_image(_stored_image(store, "kept"), "example.com/k:v1", "")
    lost = await store.commit_image(_stored_image(store, "lost"), "example.com/l:v1", "")
    store.close()
    (tmp_path / "store/blobs/sha256" / kept.layers[0].digest[7:]).unlink()
    store = ImageStore(tmp_path / "store")
    store.layers.remove(lost.layers[0].diff_id, store.state.get(
        "layer", lost.layers[0].diff_id, LayerRecord).link)  # type: ignore[union-attr]
    report = store.recover()
    assert report["images_repaired"] == 1 and report["blobs_marked_missing"] == 1
    assert report["images_dropped"] == 1
    assert store.images[kept.id].missing == {kept.layers[0].digest: MISSING_AT_RECOVERY}
    assert list(store.dropped) == [lost.id]
    assert store.dropped[lost.id].repo_tags == ["example.com/l:v1"]
    # The kept image's other blobs and its layer survive the collection at recovery.
    assert store.content.has(kept.id) and store.layer_exists(kept.layers[0].diff_id)
    store.close()
    # Over a restart: the mark and the report stay, nothing is counted twice.
    store = ImageStore(tmp_path / "store")
    report = store.recover()
    assert report.get("images_repaired", 0) == 0 and report.get("images_dropped", 0) == 0
    assert store.images[kept.id].missing and list(store.dropped) == [lost.id]
    assert store.clear_dropped() == [lost.id] and store.dropped == {}
    store.close()
