"""`crib pull`, `crib images`, `crib rmi` against a real imaged and registry; the REST
pull stream reports per-layer progress."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crib_common.clients.imaged import ImagedClient
from crib_common.models.imaged import PullRequest
from crib_common.errors import CribError
from tests.support.images import MT_OCI_MANIFEST, Pushed
from tests.support.registry import Registry
from tests.support.stack import Stack

pytestmark = pytest.mark.integration
CRIB = str(Path(sys.executable).parent / "crib")


@pytest.fixture
def node() -> Iterator[Stack]:
    stack = Stack.create()
    stack.start(("imaged",))
    try:
        yield stack
    finally:
        stack.cleanup()


def _crib(node: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CRIB, *args], env=node.env(), capture_output=True, text=True,
                          timeout=120)


def test_cli_pull_list_rmi(node: Stack, busybox_image: str, busybox_pushed: Pushed) -> None:
    out = _crib(node, "pull", busybox_image)
    assert out.returncode == 0, out.stderr
    layer = busybox_pushed.layer_digests[0].removeprefix("sha256:")[:12]
    assert f"{layer}: done" in out.stdout and busybox_pushed.config_digest in out.stdout
    listed = _crib(node, "images")
    assert listed.returncode == 0
    repo = busybox_image.rsplit(":", 1)[0]
    assert repo in listed.stdout and "latest" in listed.stdout
    assert busybox_pushed.config_digest[7:20] in listed.stdout
    assert _crib(node, "images", "-q").stdout.split() == [busybox_pushed.config_digest]
    assert "inodes" in _crib(node, "images", "fs").stdout
    bad = _crib(node, "pull", f"{repo}:missing")
    assert bad.returncode == 1 and "not_found" in bad.stderr
    pruned = _crib(node, "images", "prune")  # only untagged images: nothing to do
    assert pruned.returncode == 0 and "deleted" not in pruned.stdout
    removed = _crib(node, "rmi", busybox_image)
    assert removed.returncode == 0 and busybox_image in removed.stdout
    assert _crib(node, "images", "-q").stdout.strip() == ""
    again = _crib(node, "rmi", busybox_image)
    assert again.returncode == 1 and "no such image" in again.stderr
    assert _crib(node, "pull", "-q", busybox_image).returncode == 0
    pruned = _crib(node, "images", "prune", "--all")
    assert f"deleted {busybox_pushed.config_digest}" in pruned.stdout
    assert "freed 3 blobs, 1 layers" in pruned.stdout
    assert _crib(node, "images", "-q").stdout.strip() == ""


async def test_rest_pull_stream_and_untag(node: Stack, registry: Registry,
                                          busybox_image: str, busybox_pushed: Pushed) -> None:
    client_reg = registry.client()
    _, headers, manifest = client_reg.get(
        f"/v2/{busybox_pushed.repo}/manifests/{busybox_pushed.manifest_digest}",
        {"Accept": MT_OCI_MANIFEST})
    client_reg.push_manifest(busybox_pushed.repo, "second", manifest, MT_OCI_MANIFEST)
    second = f"{registry.host}/{busybox_pushed.repo}:second"
    async with ImagedClient(node.socket("imaged")) as client:
        events = [e async for e in client.pull(PullRequest(reference=busybox_image))]
        assert events[0].status in ("resolving", "pulling")
        assert events[-1].status == "done"
        assert events[-1].image_id == busybox_pushed.config_digest
        assert events[-1].layers[0].downloaded == events[-1].layers[0].size > 0
        events = [e async for e in client.pull(PullRequest(reference=second))]
        assert events[-1].layers[0].status == "exists"
        img = await client.resolve_image(busybox_pushed.digest_reference)
        assert sorted(img.repo_tags) == sorted([busybox_image, second])
        # Operator rmi of one tag only untags while another remains (docker rmi).
        assert (await client.remove_image(busybox_image)).removed == [busybox_image]
        assert (await client.resolve_image(second)).repo_tags == [second]
        assert (await client.remove_image(second)).removed
        assert (await client.list_images()) == []
        with pytest.raises(CribError, match="reference: Field required"):
            await client.post_model("/v1/images/pull", None, None)
        events = [e async for e in client.pull(PullRequest(reference="Bad Ref"))]
        assert events[-1].status == "error" and events[-1].error_kind == "invalid_argument"
