"""Layer content through a real registry: whiteouts, opaque dirs, links, devices, xattrs,
compressions, a multi-platform index, a tag moving between images."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from crib_common.models.imaged import SnapshotCreate
from tests.integration.imaged.conftest import Imaged
from tests.support.images import Entry, Image, ImageConfig, Layer, push_image, push_index
from tests.support.registry import Registry

pytestmark = pytest.mark.integration


def _lowers(snapshot_options: list[str]) -> list[Path]:
    opt = next(o for o in snapshot_options if o.startswith("lowerdir="))
    return [Path(p) for p in opt.removeprefix("lowerdir=").split(":")]


def _three_layers(compressions: tuple[str, str, str]) -> Image:
    base = Layer.from_entries([
        Entry.dir("etc"), Entry.file("etc/keep", "keep"), Entry.file("etc/gone", "gone"),
        Entry.dir("data", mode=0o750, uid=1000, gid=2000),
        Entry.file("data/old1", "1"), Entry.file("data/old2", "2"),
        Entry.file("bin/tool", "#!/bin/sh\n", mode=0o4755, uid=0, gid=0, mtime=1234567),
        Entry.hardlink("bin/tool-alias", "bin/tool"),
        Entry.symlink("bin/link", "/bin/tool"),
        Entry.char("dev/null", 1, 3), Entry.fifo("run/fifo"),
        Entry.file("x/attr", "a", xattrs={"user.crib": b"hello"}),
    ], compressions[0])  # type: ignore[arg-type]
    middle = Layer.from_entries([
        Entry.whiteout("etc/gone"),
        Entry.opaque("data"), Entry.file("data/new", "new"),
    ], compressions[1])  # type: ignore[arg-type]
    top = Layer.from_entries([Entry.file("etc/keep", "changed", mode=0o600)],
                             compressions[2])  # type: ignore[arg-type]
    return Image([base, middle, top], ImageConfig(cmd=["/bin/tool"], user="1000",
                                                  working_dir="/data", stop_signal="SIGINT"))


@pytest.mark.parametrize("fmt,compressions", [
    ("oci", ("gzip", "zstd", "none")),
    ("docker", ("gzip", "none", "gzip")),
])
async def test_layers_whiteouts_links(imaged: Imaged, registry: Registry, fmt: str,
                                      compressions: tuple[str, str, str]) -> None:
    image = _three_layers(compressions)
    image.fmt = fmt  # type: ignore[assignment]
    pushed = push_image(registry, f"crib-test/layers-{fmt}", "v1", image)
    image_id = await imaged.pull(pushed.reference)
    assert image_id == image.config_digest
    status = await imaged.status(pushed.reference)
    assert status.image.uid.value == 1000
    snap = await imaged.client.create_snapshot(SnapshotCreate(key=f"s-{fmt}",
                                                              image=pushed.reference))
    top, middle, base = _lowers(snap.mounts[0].options)
    # Top layer first, as overlayfs wants lowerdir.
    assert (top / "etc/keep").read_text() == "changed"
    assert stat.S_IMODE(os.stat(top / "etc/keep").st_mode) == 0o600
    wh = os.lstat(middle / "etc/gone")
    assert stat.S_ISCHR(wh.st_mode) and os.major(wh.st_rdev) == 0 and os.minor(wh.st_rdev) == 0
    assert os.getxattr(middle / "data", "trusted.overlay.opaque") == b"y"
    assert (middle / "data/new").read_text() == "new"
    assert not (middle / "data/.wh..wh..opq").exists()
    tool = os.stat(base / "bin/tool")
    assert stat.S_IMODE(tool.st_mode) == 0o4755 and tool.st_mtime == 1234567
    assert tool.st_nlink == 2 and os.stat(base / "bin/tool-alias").st_ino == tool.st_ino
    assert os.readlink(base / "bin/link") == "/bin/tool"
    data = os.stat(base / "data")
    assert (data.st_uid, data.st_gid, stat.S_IMODE(data.st_mode)) == (1000, 2000, 0o750)
    null = os.lstat(base / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1
    assert stat.S_ISFIFO(os.lstat(base / "run/fifo").st_mode)
    assert os.getxattr(base / "x/attr", "user.crib") == b"hello"
    assert snap.upperdir.endswith("/fs") and Path(snap.upperdir).is_dir()
    usage = await imaged.client.snapshot_usage(f"s-{fmt}")
    assert usage.bytes == 0 and usage.inodes == 0
    (Path(snap.upperdir) / "written").write_bytes(b"x" * 10000)
    usage = await imaged.client.snapshot_usage(f"s-{fmt}")
    assert usage.bytes >= 10000 and usage.inodes == 1
    # A layer in use by a snapshot survives removal of its image.
    await imaged.remove(pushed.reference)
    assert (top / "etc/keep").exists()
    await imaged.client.remove_snapshot(f"s-{fmt}")
    assert not top.exists()


async def test_shared_layer_unpacked_once(imaged: Imaged, registry: Registry) -> None:
    shared = Layer.from_entries([Entry.file("shared", "s")])
    a = Image([shared, Layer.from_entries([Entry.file("a", "a")])])
    b = Image([shared, Layer.from_entries([Entry.file("b", "b")], "zstd")])
    pa = push_image(registry, "crib-test/share-a", "v1", a)
    pb = push_image(registry, "crib-test/share-b", "v1", b)
    await imaged.pull(pa.reference)
    await imaged.pull(pb.reference)
    layer_dirs = [p for p in (imaged.root / "layers").iterdir()]
    assert len(layer_dirs) == 3
    await imaged.remove(pa.reference)
    assert len(list((imaged.root / "layers").iterdir())) == 2
    assert (imaged.root / "layers" / shared.diff_id.split(":")[1]).exists()


async def test_multi_platform_index(imaged: Imaged, registry: Registry) -> None:
    images = [
        Image([Layer.from_entries([Entry.file("arch", "arm64")])], architecture="arm64",
              variant="v8"),
        Image([Layer.from_entries([Entry.file("arch", "amd64")])], architecture="amd64"),
        Image([Layer.from_entries([Entry.file("arch", "s390x")])], architecture="s390x"),
    ]
    for fmt in ("oci", "docker"):
        pushed = push_index(registry, f"crib-test/multi-{fmt}", "v1", images,
                            fmt=fmt)  # type: ignore[arg-type]
        image_id = await imaged.pull(pushed.reference)
        assert image_id == images[1].config_digest
        img = (await imaged.status(pushed.reference)).image
        # The repo digest is the digest the tag resolved to: the index.
        repo_digest = f"{registry.host}/crib-test/multi-{fmt}@{pushed.manifest_digest}"
        assert repo_digest in img.repo_digests
        assert (await imaged.status(repo_digest)).image.id == image_id
    only_arm = push_index(registry, "crib-test/only-arm", "v1", images[:1])
    with pytest.raises(Exception, match="no image for platform linux/amd64"):
        await imaged.pull(only_arm.reference)


async def test_tag_moves_between_images(imaged: Imaged, registry: Registry) -> None:
    one = Image([Layer.from_entries([Entry.file("v", "1")])])
    two = Image([Layer.from_entries([Entry.file("v", "2")])])
    p1 = push_image(registry, "crib-test/moving", "latest", one)
    push_image(registry, "crib-test/moving", "stable", one)
    id1 = await imaged.pull(p1.reference)
    await imaged.pull(f"{registry.host}/crib-test/moving:stable")
    p2 = push_image(registry, "crib-test/moving", "latest", two)
    id2 = await imaged.pull(p2.reference)
    assert id1 != id2
    first = (await imaged.status(id1)).image
    second = (await imaged.status(id2)).image
    assert first.repo_tags == [f"{registry.host}/crib-test/moving:stable"]
    assert second.repo_tags == [p2.reference]
    assert (await imaged.status(p2.reference)).image.id == id2
    # Pulling again is a no-op that keeps names.
    assert await imaged.pull(p2.reference) == id2
    assert len((await imaged.list()).images) == 2
    filtered = await imaged.list(p2.reference)
    assert [i.id for i in filtered.images] == [id2]
    # CRI RemoveImage by one tag removes the image with all its tags (api.proto).
    await imaged.remove(f"{registry.host}/crib-test/moving:stable")
    assert (await imaged.status(id1)).image.id == ""
