"""CRI StreamImages on an in-process imaged: pages of at least one image, each image
exactly once, the same set ListImages answers; the filter; nothing stored, no message."""

from __future__ import annotations

import pytest

import imaged.cri.image_stream as image_stream
from crib_common.cri.runtime.v1 import (
    ImageFilter,
    ImageSpec,
    StreamImagesRequest,
    StreamImagesResponse,
)
from crib_common.errors import InvalidArgument
from tests.integration.imaged.conftest import SVC, Imaged
from tests.support.images import Entry, Image, Layer, push_image
from tests.support.registry import Registry

pytestmark = pytest.mark.integration


async def _stream(imaged: Imaged, wanted: str = "") -> list[StreamImagesResponse]:
    request = StreamImagesRequest(filter=ImageFilter(image=ImageSpec(image=wanted))) \
        if wanted else StreamImagesRequest()
    return [StreamImagesResponse().parse(raw) async for raw in imaged.client.stream_cri(
        SVC + "StreamImages", bytes(request), timeout=10)]


async def test_stream_images_in_pages(imaged: Imaged, registry: Registry,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert await _stream(imaged) == []  # no images: EOF without a message
    monkeypatch.setattr(image_stream, "PAGE_SIZE", 2)
    refs = []
    for i in range(5):
        image = Image([Layer.from_entries([Entry.file("n", str(i))], "none")])
        refs.append(push_image(registry, "crib-test/stream", f"v{i}", image).reference)
        await imaged.pull(refs[-1])
    pages = await _stream(imaged)
    assert [len(p.images) for p in pages] == [2, 2, 1]
    streamed = [img.id for p in pages for img in p.images]
    listed = [img.id for img in (await imaged.list()).images]
    assert streamed == listed and len(set(streamed)) == 5
    assert [t for p in pages for img in p.images for t in img.repo_tags] == refs
    [one] = await _stream(imaged, refs[3])
    assert [img.repo_tags for img in one.images] == [[refs[3]]]
    assert await _stream(imaged, refs[0].replace(":v0", ":absent")) == []
    with pytest.raises(InvalidArgument, match="invalid image reference"):
        await _stream(imaged, "Not A Reference!")
