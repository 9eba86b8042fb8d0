"""Hostile registries and layers: each pull fails with a clear error, the store unchanged."""

from __future__ import annotations

import json
import time
from pathlib import Path
from collections.abc import Iterator

import pytest

from crib_common.errors import CribError, InvalidArgument, NotFound
from tests.integration.imaged.conftest import Imaged
from tests.support.images import MT_OCI_MANIFEST, Entry, Image, Layer, push_image
from tests.support.registry import Registry, StaticRegistry, sha256_digest

pytestmark = pytest.mark.integration


@pytest.fixture
def static() -> Iterator[StaticRegistry]:
    srv = StaticRegistry().start()
    try:
        yield srv
    finally:
        srv.stop()


async def _pull_fails(imaged: Imaged, ref: str, match: str,
                      kind: type[CribError] = InvalidArgument) -> None:
    before = imaged.files()
    with pytest.raises(kind, match=match):
        await imaged.pull(ref)
    assert imaged.files() == before
    assert (await imaged.list()).images == []


@pytest.mark.parametrize("entries,match", [
    ([Entry.file("../escape", "x")], "leaves the layer"),
    ([Entry.file("/abs", "x")], "absolute path"),
    ([Entry.symlink("evil", "/tmp"), Entry.file("evil/owned", "x")], "through the symlink"),
    ([Entry.symlink("up", ".."), Entry.file("up/x", "x")], "through the symlink"),
    ([Entry.hardlink("hl", "../../../etc/passwd")], "leaves the layer"),
    ([Entry.hardlink("hl", "etc/passwd")], "not in this layer"),
    ([Entry.file("dir/.wh.", "")], "names nothing"),
])
async def test_unsafe_layer_rejected(imaged: Imaged, registry: Registry,
                                     entries: list[Entry], match: str) -> None:
    good = Layer.from_entries([Entry.file("fine", "ok")])
    bad = Layer.from_entries([Entry.dir("dir")] + entries)
    pushed = push_image(registry, "crib-test/hostile", "bad", Image([good, bad]))
    await _pull_fails(imaged, pushed.reference, match)


async def test_digest_mismatch_and_truncation(imaged: Imaged, registry: Registry) -> None:
    layer = Layer.from_entries([Entry.file("f", "x" * 5000)], "none")
    pushed = push_image(registry, "crib-test/tampered", "v1", Image([layer]))
    path = registry.blob_path(layer.digest)
    original = path.read_bytes()
    path.write_bytes(original[:100] + b"Z" + original[101:])
    await _pull_fails(imaged, pushed.reference, "digest mismatch")
    path.write_bytes(original[:1000])
    await _pull_fails(imaged, pushed.reference, "1000 bytes, the manifest says")
    path.write_bytes(original)
    assert await imaged.pull(pushed.reference)


async def test_unknown_manifest_media_type(imaged: Imaged, static: StaticRegistry) -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.crib.unknown+json",
                       "config": {}, "layers": []}).encode()
    static.add_manifest("crib/odd", "v1", body, "application/vnd.crib.unknown+json")
    await _pull_fails(imaged, f"{static.host}/crib/odd:v1", "unsupported manifest media type")


async def test_huge_manifest(imaged: Imaged, static: StaticRegistry) -> None:
    image = Image([Layer.from_entries([Entry.file("a", "a")])])
    doc = json.loads(image.manifest)
    doc["annotations"] = {"padding": "x" * (10 * 1024 * 1024)}
    body = json.dumps(doc).encode()
    static.add_manifest("crib/huge", "v1", body, MT_OCI_MANIFEST)
    await _pull_fails(imaged, f"{static.host}/crib/huge:v1", "over the 4194304-byte limit")


async def test_lying_digest_header_and_by_digest(imaged: Imaged,
                                                 static: StaticRegistry) -> None:
    image = Image([Layer.from_entries([Entry.file("a", "a")])])
    wrong = sha256_digest(b"something else")
    static.add_manifest("crib/liar", "v1", image.manifest, MT_OCI_MANIFEST, digest=wrong)
    await _pull_fails(imaged, f"{static.host}/crib/liar:v1", "registry says")
    await _pull_fails(imaged, f"{static.host}/crib/liar@{wrong}", "does not match its digest")


async def test_blob_redirect_followed(imaged: Imaged, static: StaticRegistry) -> None:
    layer = Layer.from_entries([Entry.file("redirected", "yes")])
    image = Image([layer])
    static.add_blob("crib/redir", image.config_blob)
    static.add_blob("storage", layer.blob)
    static.routes[f"/v2/crib/redir/blobs/{layer.digest}"] = (
        307, {"Location": f"http://{static.host}/v2/storage/blobs/{layer.digest}"}, b"")
    static.add_manifest("crib/redir", "v1", image.manifest, MT_OCI_MANIFEST)
    assert await imaged.pull(f"{static.host}/crib/redir:v1") == image.config_digest
    assert f"/v2/storage/blobs/{layer.digest}" in static.requests


async def test_missing_image_and_bad_reference(imaged: Imaged, registry: Registry) -> None:
    await _pull_fails(imaged, f"{registry.host}/crib-test/absent:v1", "not found", NotFound)
    await _pull_fails(imaged, "UPPER CASE!", "invalid image reference")
    await _pull_fails(imaged, f"{registry.host}/a/b@sha256:123", "bad digest")


async def test_failed_pull_waits_for_a_commit_in_flight(
        imaged: Imaged, registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """One layer is rejected while another's commit is still in its thread: the failed
    pull returns only once that commit is done and collected (it used to land after)."""
    from imaged.store.content import IngestWriter

    good = Layer.from_entries([Entry.file("slow-commit", "ok" * 1000)])
    bad = Layer.from_entries([Entry.file("../escape", "x")])
    pushed = push_image(registry, "crib-test/hostile", "slow-commit", Image([good, bad]))
    commit = IngestWriter.commit

    def slow_commit(self: IngestWriter) -> Path:
        if self.digest == good.digest:
            time.sleep(0.5)
        return commit(self)

    monkeypatch.setattr(IngestWriter, "commit", slow_commit)
    await _pull_fails(imaged, pushed.reference, "leaves the layer")
