"""End to end: the independent grpcio CRI client -> crib-gateway -> crib-imaged -> a real
registry. PullImage, ListImages, ImageStatus, ImageFsInfo, RemoveImage."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
from cri_api.v1 import api_pb2, api_pb2_grpc

from tests.support.images import Pushed
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture
def node() -> Iterator[Stack]:
    stack = Stack.create()
    stack.start(("imaged", "gateway"))
    try:
        yield stack
    finally:
        stack.cleanup()


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
        assert usage.fs_id.mountpoint.endswith("lib/imaged")
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
