"""Manifest parsing and platform selection."""

from __future__ import annotations

import json

import pytest

from crib_common.errors import InvalidArgument
from imaged.oci.manifest import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Platform,
    media_type_of,
    parse_index,
    parse_manifest,
    select_manifest,
)

D = "sha256:" + "b" * 64


def _index(*platforms: dict[str, str]) -> bytes:
    return json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": "sha256:" + str(i) * 64, "size": 10,
         "platform": p} for i, p in enumerate(platforms)]}).encode()


def test_select_exact_and_variant() -> None:
    raw = _index({"os": "linux", "architecture": "arm", "variant": "v6"},
                 {"os": "linux", "architecture": "arm", "variant": "v7"},
                 {"os": "linux", "architecture": "amd64"},
                 {"os": "windows", "architecture": "amd64"})
    entries = parse_index(raw, OCI_INDEX)
    assert select_manifest(entries, Platform("linux", "amd64")).digest == "sha256:" + "2" * 64
    assert select_manifest(entries, Platform("linux", "arm", "v7")).digest.endswith("1" * 64)
    # An armv8 32-bit host runs v7 images, preferring the newest compatible variant.
    assert select_manifest(entries, Platform("linux", "arm", "v8")).digest.endswith("1" * 64)
    with pytest.raises(InvalidArgument, match="no image for platform linux/s390x"):
        select_manifest(entries, Platform("linux", "s390x"))


def test_arm64_v8_default() -> None:
    entries = parse_index(_index({"os": "linux", "architecture": "arm64", "variant": "v8"}),
                          OCI_INDEX)
    assert select_manifest(entries, Platform("linux", "arm64")).digest.endswith("0" * 64)


def test_manifest_validation() -> None:
    good = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D,
                       "size": 5},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
                        "digest": D, "size": 7}]}
    m = parse_manifest(json.dumps(good).encode(), OCI_MANIFEST)
    assert m.layers[0].size == 7
    for bad, match in [
        ({**good, "layers": [{"mediaType": "application/x-foreign", "digest": D,
                              "size": 1}]}, "unsupported layer media type"),
        ({**good, "config": {"digest": "sha256:zz", "size": 1}}, "invalid digest"),
        ({**good, "config": {"digest": D, "size": -1}}, "invalid size"),
        ({**good, "schemaVersion": 1}, "schemaVersion"),
    ]:
        with pytest.raises(InvalidArgument, match=match):
            parse_manifest(json.dumps(bad).encode(), OCI_MANIFEST)
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        parse_manifest(b"{nope", DOCKER_MANIFEST)
    with pytest.raises(InvalidArgument, match="unsupported manifest media type"):
        parse_manifest(json.dumps(good).encode(), "application/vnd.unknown")


def test_media_type_from_header_or_body() -> None:
    body = json.dumps({"schemaVersion": 2, "config": {}, "layers": []}).encode()
    assert media_type_of(body, "application/json") == OCI_MANIFEST
    assert media_type_of(body, f"{DOCKER_MANIFEST}; charset=utf-8") == DOCKER_MANIFEST
