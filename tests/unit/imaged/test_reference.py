"""Reference normalisation as Docker and containerd do it."""

from __future__ import annotations

import pytest

from crib_common.errors import InvalidArgument
from imaged.oci.reference import parse_reference

D = "sha256:" + "a" * 64


@pytest.mark.parametrize("raw,expected", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("user/app:v1", "docker.io/user/app:v1"),
    ("index.docker.io/foo", "docker.io/library/foo:latest"),
    ("quay.io/a/b/c:tag", "quay.io/a/b/c:tag"),
    ("localhost/app", "localhost/app:latest"),
    ("127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b:latest"),
    (f"busybox@{D}", f"docker.io/library/busybox@{D}"),
    (f"reg.io:443/x:tag@{D}", f"reg.io:443/x@{D}"),
])
def test_normalise(raw: str, expected: str) -> None:
    assert str(parse_reference(raw)) == expected


def test_api_host_of_docker_hub() -> None:
    assert parse_reference("busybox").api_host == "registry-1.docker.io"
    assert parse_reference("127.0.0.1:5000/x").api_host == "127.0.0.1:5000"


@pytest.mark.parametrize("raw", ["", "  ", "Bad Name", "a/B", "x:", "x@sha256:12",
                                 "x:" + "t" * 129, "a//b", "-a", "x@md5:" + "a" * 32])
def test_invalid(raw: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_reference(raw)
