"""End to end: the independent grpcio CRI client -> crib-gateway -> crib-imaged -> a real
registry. PullImage, ListImages, ImageStatus, ImageFsInfo (image and container
filesystems), RemoveImage."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2, api_pb2_grpc

from crib_common.clients.imaged import ImagedClient
from crib_common.models.imaged import SnapshotCreate
from imaged.cri.image_fs_info import mountpoint_of
from tests.support.images import Pushed
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture
def node() -> Iterator[Stack]:
    with Stack.running(("imaged", "gateway")) as stack:
        yield stack


def test_image_service_through_gateway(node: Stack, busybox_image: str,
                                       busybox_pushed: Pushed) -> None:
    with grpc.insecure_channel(f"unix://{node.cri_socket}") as channel:
        images = api_pb2_grpc.ImageServiceStub(channel)
        spec = api_pb2.ImageSpec(image=busybox_image)
        pulled = images.PullImage(api_pb2.PullImageRequest(image=spec), timeout=120)
        assert pulled.image_ref == busybox_pushed.config_digest
        listed = images.ListImages(api_pb2.ListImagesRequest(), timeout=10)
        assert [i.id for i in listed.images] == [pulled.image_ref]
        assert list(listed.images[0].repo_tags) == [busybox_image]
        filtered = images.ListImages(api_pb2.ListImagesRequest(
            filter=api_pb2.ImageFilter(image=spec)), timeout=10)
        assert len(filtered.images) == 1
        status = images.ImageStatus(api_pb2.ImageStatusRequest(image=spec, verbose=True),
                                    timeout=10)
        assert status.image.id == pulled.image_ref and status.image.size > 0
        assert json.loads(status.info["info"])["imageSpec"]["config"]["Cmd"] == ["/bin/sh"]
        fs = images.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=10)
        usage = fs.image_filesystems[0]
        assert usage.used_bytes.value > 1_000_000 and usage.inodes_used.value > 0
        # The mount point of the filesystem holding the store, not the store's directory.
        assert usage.fs_id.mountpoint == mountpoint_of(node.root / "lib/imaged")
        images.RemoveImage(api_pb2.RemoveImageRequest(image=spec), timeout=30)
        images.RemoveImage(api_pb2.RemoveImageRequest(image=spec), timeout=30)  # idempotent
        gone = images.ImageStatus(api_pb2.ImageStatusRequest(image=spec), timeout=10)
        assert not gone.HasField("image")
        assert images.ListImages(api_pb2.ListImagesRequest(), timeout=10).images == []
        after = images.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=10)
        assert after.image_filesystems[0].used_bytes.value < usage.used_bytes.value
        with pytest.raises(grpc.RpcError) as err:
            images.PullImage(api_pb2.PullImageRequest(
                image=api_pb2.ImageSpec(image="Bad Reference!")), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(
                image=busybox_image.rsplit(":", 1)[0] + ":missing")), timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_container_filesystems_through_gateway(node: Stack, busybox_image: str) -> None:
    """ImageFsInfo reports the writable layers apart from the image store: what their
    upper dirs hold, on the filesystem that holds them (the image store's own here: one
    disk, one mountpoint, so the kubelet does not think the image filesystem is split)."""
    client = ImagedClient(node.socket("imaged"))
    with grpc.insecure_channel(f"unix://{node.cri_socket}") as channel:
        images = api_pb2_grpc.ImageServiceStub(channel)
        spec = api_pb2.ImageSpec(image=busybox_image)
        images.PullImage(api_pb2.PullImageRequest(image=spec), timeout=120)
        try:
            empty = images.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=10)
            [image_fs] = empty.image_filesystems
            [container_fs] = empty.container_filesystems
            snapshots = (node.root / "lib/imaged/snapshots").resolve()
            assert container_fs.fs_id.mountpoint == mountpoint_of(snapshots)
            assert container_fs.fs_id.mountpoint == image_fs.fs_id.mountpoint
            assert container_fs.used_bytes.value == 0 and container_fs.inodes_used.value == 0
            assert container_fs.timestamp > 0
            for key in ("fs-a", "fs-b"):
                snap = await client.create_snapshot(SnapshotCreate(key=key, image=busybox_image))
                upper = Path(snap.upperdir)
                assert upper.parent.parent == snapshots
                # What a container writes through the overlay lands in its upper dir.
                (upper / "data").mkdir()
                (upper / "data/blob").write_bytes(os.urandom(300_000))
                (upper / "data/note").write_text(key)
            used = images.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=10)
            [container_fs] = used.container_filesystems
            # Two snapshots: 2 x (dir + 2 files) inodes, 2 x 300 kB at least (blocks).
            assert container_fs.inodes_used.value == 6
            assert 600_000 <= container_fs.used_bytes.value < 700_000
            # Writable layers are not image data.
            assert used.image_filesystems[0].used_bytes.value == image_fs.used_bytes.value
            await client.remove_snapshot("fs-a")
            after = images.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=10)
            assert after.container_filesystems[0].inodes_used.value == 3
            assert 300_000 <= after.container_filesystems[0].used_bytes.value < 350_000
            await client.remove_snapshot("fs-b")
        finally:
            await client.close()


def test_stream_images_through_gateway(node: Stack, busybox_image: str,
                                       busybox_pushed: Pushed) -> None:
    """StreamImages (server streaming) through the gateway with plain grpcio: the stub
    package predates the RPC, so the call is made by path; a StreamImagesResponse has
    ListImagesResponse's wire layout (field 1: repeated Image)."""
    with grpc.insecure_channel(f"unix://{node.cri_socket}") as channel:
        stream = channel.unary_stream(
            "/runtime.v1.ImageService/StreamImages",
            request_serializer=api_pb2.ListImagesRequest.SerializeToString,
            response_deserializer=api_pb2.ListImagesResponse.FromString)
        assert list(stream(api_pb2.ListImagesRequest(), timeout=10)) == []
        images = api_pb2_grpc.ImageServiceStub(channel)
        images.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(
            image=busybox_image)), timeout=120)
        [page] = list(stream(api_pb2.ListImagesRequest(), timeout=10))
        assert [i.id for i in page.images] == [busybox_pushed.config_digest]
        assert list(page.images[0].repo_tags) == [busybox_image]
        with pytest.raises(grpc.RpcError) as err:
            list(stream(api_pb2.ListImagesRequest(filter=api_pb2.ImageFilter(
                image=api_pb2.ImageSpec(image="Bad Reference!"))), timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
