"""Transient registry failures: 429/5xx answers are retried with backoff (Retry-After
honoured), a blob cut off mid-way resumes with a Range request, a registry ignoring Range
or answering the wrong range still yields a correct pull, and a registry failing for good
fails the pull quickly with a clear error and an unchanged store."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crib_common.errors import Unavailable
from tests.integration.imaged.conftest import Imaged, start_imaged, stop_imaged
from tests.support.images import Entry, Image, Layer, digest_of_file
from tests.support.registry import StaticRegistry

pytestmark = pytest.mark.integration

REPO = "crib/flaky"


@pytest.fixture
async def fast_retry(imaged_root: Path) -> AsyncIterator[Imaged]:
    """imaged with 3 tries and a 10 ms backoff base, so failing tests stay fast."""
    d = await start_imaged(imaged_root, retry_attempts=3, retry_base_delay=0.01,
                           retry_max_delay=2.0)
    try:
        yield d
    finally:
        await stop_imaged(d)


def _serve(static: StaticRegistry, size: int = 400_000) -> tuple[Image, Layer, str]:
    """An image with one incompressible layer of about `size` bytes; (image, layer, ref)."""
    layer = Layer.from_entries([Entry.file("payload", os.urandom(size))], "gzip")
    image = Image([layer])
    static.add_image(REPO, "v1", image.manifest, image.manifest_media_type,
                     [image.config_blob, layer.blob])
    return image, layer, f"{static.host}/{REPO}:v1"


def _blob_path(layer: Layer) -> str:
    return f"/v2/{REPO}/blobs/{layer.digest}"


def _ranges(static: StaticRegistry, path: str) -> list[str]:
    return [h.get("range", "") for p, h in static.headers if p == path]


def _stored(d: Imaged, layer: Layer) -> Path:
    blob = d.root / "blobs/sha256" / layer.digest.removeprefix("sha256:")
    assert digest_of_file(blob) == layer.digest
    return blob


async def test_503_and_429_then_success(fast_retry: Imaged) -> None:
    with StaticRegistry() as static:
        image, layer, ref = _serve(static)
        manifest = f"/v2/{REPO}/manifests/v1"
        static.script[manifest] = [(503, {"Retry-After": "1"}, b"busy")]
        static.script[_blob_path(layer)] = [(503, {}, b""), (429, {}, b"slow down")]
        started = time.monotonic()
        assert await fast_retry.pull(ref) == image.config_digest
        elapsed = time.monotonic() - started
        assert static.requests.count(manifest) == 2
        assert static.requests.count(_blob_path(layer)) == 3
        # The 503's Retry-After (1 s) was waited for, not the 10 ms backoff.
        assert 0.9 <= elapsed < 5, elapsed
        _stored(fast_retry, layer)


async def test_cut_blob_resumes_with_range(fast_retry: Imaged) -> None:
    with StaticRegistry() as static:
        image, layer, ref = _serve(static)
        half = len(layer.blob) // 2
        static.cut[_blob_path(layer)] = [half]
        assert await fast_retry.pull(ref) == image.config_digest
        ranges = _ranges(static, _blob_path(layer))
        assert ranges[0] == "" and len(ranges) == 2
        # Resumed from what had arrived: at least something, at most the half sent.
        start = int(ranges[1].removeprefix("bytes=").rstrip("-"))
        assert 0 < start <= half and ranges[1] == f"bytes={start}-"
        _stored(fast_retry, layer)
        assert list((fast_retry.root / "ingest").iterdir()) == []


async def test_registry_ignoring_range_restarts_from_zero(fast_retry: Imaged) -> None:
    with StaticRegistry() as static:
        image, layer, ref = _serve(static)
        static.honor_range = False
        static.cut[_blob_path(layer)] = [len(layer.blob) // 2]
        assert await fast_retry.pull(ref) == image.config_digest
        ranges = _ranges(static, _blob_path(layer))
        assert len(ranges) == 2 and ranges[1].startswith("bytes=")
        _stored(fast_retry, layer)


async def test_wrong_content_range_restarts_from_zero(fast_retry: Imaged) -> None:
    with StaticRegistry() as static:
        image, layer, ref = _serve(static)
        path = _blob_path(layer)
        size = len(layer.blob)
        static.cut[path] = [size // 2]
        # Claims bytes from 0 although we ask for the rest: must not be appended.
        static.script[path] = [
            (200, {}, layer.blob),  # consumed by the cut request
            (206, {"Content-Range": f"bytes 0-{size - 1}/{size}"}, layer.blob)]
        assert await fast_retry.pull(ref) == image.config_digest
        ranges = _ranges(static, path)
        assert len(ranges) == 3 and ranges[1].startswith("bytes=") and ranges[2] == ""
        _stored(fast_retry, layer)


async def test_permanent_500_fails_quickly(fast_retry: Imaged) -> None:
    with StaticRegistry() as static:
        _image, layer, ref = _serve(static)
        static.routes[_blob_path(layer)] = (500, {}, b"broken")
        before = fast_retry.files()
        started = time.monotonic()
        with pytest.raises(Unavailable, match=r"answered 500 .*gave up after 3 attempts"):
            await fast_retry.pull(ref)
        assert time.monotonic() - started < 2
        assert static.requests.count(_blob_path(layer)) == 3
        assert fast_retry.files() == before
        assert (await fast_retry.list()).images == []


async def test_connection_refused_is_retried_then_unavailable(fast_retry: Imaged) -> None:
    static = StaticRegistry()  # never started: nothing listens on its port
    started = time.monotonic()
    with pytest.raises(Unavailable, match="unreachable.*gave up after 3 attempts"):
        await fast_retry.pull(f"{static.host}/{REPO}:v1")
    assert time.monotonic() - started < 2


async def test_resumed_bytes_failing_the_digest_refetch_from_zero(fast_retry: Imaged) -> None:
    """Resumed content is trusted for nothing: a range answered with the right headers
    but wrong bytes fails the whole blob's digest, and the blob is fetched again whole."""
    with StaticRegistry() as static:
        image, layer, ref = _serve(static)
        path = _blob_path(layer)
        bad = layer.blob[:-1] + bytes([layer.blob[-1] ^ 0xFF])  # the last byte: resumed
        static.cut[path] = [len(layer.blob) // 2]
        static.script[path] = [(200, {}, layer.blob), (200, {}, bad)]  # 2nd: 206 of `bad`
        assert await fast_retry.pull(ref) == image.config_digest
        ranges = _ranges(static, path)
        assert len(ranges) == 3 and ranges[0] == "" and ranges[1].startswith("bytes=")
        assert ranges[2] == ""
        _stored(fast_retry, layer)
