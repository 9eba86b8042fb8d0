"""ListImages and ImageStatus replies from cached per-image encodings are what betterproto
writes, and follow tag and pin changes."""

from __future__ import annotations

from crib_common.cri.runtime.v1 import ImageStatusResponse, ListImagesResponse
from imaged.cri.image_list import cri_image, image_entry
from imaged.store.records import ImageRecord


def _image(n: int, user: str = "") -> ImageRecord:
    return ImageRecord(id=f"sha256:{n:064x}", repo_tags=[f"reg/x:{n}"],
                       repo_digests=[f"reg/x@sha256:{n + 1:064x}"],
                       manifest_digest=f"sha256:{n + 2:064x}", size=1000 + n,
                       config={"config": {"User": user}} if user else {})


def test_entries_match_betterproto() -> None:
    images = [_image(1), _image(2, user="1000:1000"), _image(3, user="nobody")]
    data = b"".join(image_entry(i) for i in images)
    assert data == bytes(ListImagesResponse(images=[cri_image(i) for i in images]))
    assert image_entry(images[1]) == bytes(ImageStatusResponse(image=cri_image(images[1])))
    parsed = ListImagesResponse().parse(data)
    assert parsed.images[1].uid.value == 1000
    assert parsed.images[2].username == "nobody"


def test_entry_follows_changes() -> None:
    img = _image(9)
    before = image_entry(img)
    img.repo_tags = [*img.repo_tags, "reg/x:latest"]
    img.pinned = True
    after = image_entry(img)
    assert after != before
    got = ImageStatusResponse().parse(after).image
    assert got.repo_tags == ["reg/x:9", "reg/x:latest"] and got.pinned
