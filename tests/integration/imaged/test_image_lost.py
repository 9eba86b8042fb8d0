"""Issue 11, "Lost images": an image removed while a container runs from it, pulled again
and then carried through imaged restarts stays listed, with every blob and layer it names
on disk; what recovery cannot keep is reported by `crib status`.

The sequence that lost images: run a container from busybox; remove every image while it
runs (the blobs go, the unpacked layers stay for the container's snapshot); pull again
(the layers are found unpacked, so the old code never fetched their compressed blobs and
stored an image naming blobs that were not there); restart imaged (recovery found the
blobs missing and dropped the image).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from tests.integration.runtimed.conftest import Cri
from tests.support.images import Entry, Image, Layer, push_image
from tests.support.registry import Registry
from tests.support.stack import Stack

pytestmark = pytest.mark.integration
CRIB = str(Path(sys.executable).parent / "crib")


@pytest.fixture(scope="module")
def node() -> Iterator[Stack]:
    # `crib restart` of a dev stack's imaged by its own pid file: separate processes.
    with Stack.running(launcher="process") as stack:
        yield stack


@pytest.fixture
def cri(node: Stack) -> Iterator[Cri]:
    client = Cri(node)
    try:
        yield client
    finally:
        client.remove_all_pods()
        client.close()


def image_needs(cri: Cri, ref: str) -> tuple[list[str], list[str]]:
    """(blob digests, layer diff_ids) the stored image `ref` names, from ImageStatus."""
    reply = cri.img.ImageStatus(api_pb2.ImageStatusRequest(
        image=api_pb2.ImageSpec(image=ref), verbose=True), timeout=10)
    assert reply.image.id, f"{ref} is not listed"
    info = json.loads(reply.info["info"])
    blobs = [info["id"], info["manifestDigest"]] + [lay["digest"] for lay in info["layers"]]
    return blobs, [lay["diff_id"] for lay in info["layers"]]


def assert_on_disk(root: Path, blobs: list[str], diff_ids: list[str]) -> None:
    for digest in blobs:
        assert (root / "blobs/sha256" / digest.removeprefix("sha256:")).is_file(), \
            f"blob {digest} is not on disk"
    for diff_id in diff_ids:
        assert (root / "layers" / diff_id.removeprefix("sha256:") / "diff").is_dir(), \
            f"layer {diff_id} is not on disk"


def test_rmi_while_running_pull_restart_keeps_image(node: Stack, cri: Cri,
                                                    busybox_image: str) -> None:
    root = node.root / "lib/imaged"
    cri.img.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=busybox_image)),
                      timeout=120)
    sid, pod = cri.run_pod()
    cid = cri.create(sid, pod, busybox_image, "sleeper", command=["/bin/sleep", "3600"])
    cri.start(cid)
    # 2. every image goes while the container runs: the blobs go, its layers stay.
    for img in cri.img.ListImages(api_pb2.ListImagesRequest(), timeout=10).images:
        cri.img.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=img.id)),
                            timeout=30)
    assert cri.img.ListImages(api_pb2.ListImagesRequest(), timeout=10).images == []
    assert list((root / "blobs/sha256").iterdir()) == []
    assert [p for p in (root / "layers").iterdir() if not p.name.startswith(".")]
    # 3. pull again: the unpacked layer is reused, its compressed blob fetched again.
    image_id = cri.img.PullImage(api_pb2.PullImageRequest(
        image=api_pb2.ImageSpec(image=busybox_image)), timeout=120).image_ref
    blobs, diff_ids = image_needs(cri, busybox_image)
    assert_on_disk(root, blobs, diff_ids)
    # 4. restart imaged, politely and then not: the image is still listed, still whole.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        node.kill("imaged", sig)
        node.start_one("imaged")
        listed = [i.id for i in cri.img.ListImages(api_pb2.ListImagesRequest(),
                                                     timeout=10).images]
        assert listed == [image_id], (sig, listed)
        assert image_needs(cri, busybox_image) == (blobs, diff_ids)
        assert_on_disk(root, blobs, diff_ids)
    assert "image dropped" not in node.log("imaged")
    assert cri.status(cid).state == api_pb2.CONTAINER_RUNNING


def _crib(node: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CRIB, *args], env=node.env(), capture_output=True, text=True,
                          timeout=120)


def test_dropped_image_reported_by_crib_status(node: Stack, cri: Cri,
                                               registry: Registry) -> None:
    """What recovery drops shows in `crib status` until cleared; `crib restart imaged`
    restarts the dev stack's imaged by its pid file, politely or by kill -9."""
    image = Image([Layer.from_entries([Entry.file("gone", "soon")])])
    pushed = push_image(registry, "crib-test/dropped", "v1", image)
    cri.img.PullImage(api_pb2.PullImageRequest(
        image=api_pb2.ImageSpec(image=pushed.reference)), timeout=60)
    pids = node.root / "pids"
    pids.mkdir()
    (pids / "imaged.pid").write_text(str(node.procs.pop("imaged").pid))
    restart = [CRIB, "restart", "imaged", "--pid-dir", str(pids), "--log-dir", str(node.root)]
    try:
        # The unpacked layer goes behind imaged's back: nothing can run the image.
        shutil.rmtree(node.root / "lib/imaged/layers" / image.layers[0].diff_id[7:])
        out = subprocess.run(restart, env=node.env(), capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0 and "ready in" in out.stdout, out.stderr
        status = _crib(node, "status")
        assert status.returncode == 1, status.stdout
        assert "RuntimeReady: true" in status.stdout
        assert "1 image(s) dropped at recovery" in status.stdout
        assert f"{image.config_digest} ({pushed.reference})" in status.stdout
        assert "unpacked layer" in status.stdout
        cleared = _crib(node, "images", "recovery", "--clear")
        assert cleared.returncode == 0 and "nothing dropped" in cleared.stdout
        assert _crib(node, "status").returncode == 0
        killed = subprocess.run(restart + ["--kill"], env=node.env(), capture_output=True,
                                text=True, timeout=60)
        assert killed.returncode == 0 and "ready in" in killed.stdout, killed.stderr
        assert "RuntimeReady: true" in _crib(node, "status").stdout
    finally:
        pid = int((pids / "imaged.pid").read_text())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(300):
            if not Path(f"/proc/{pid}").exists() or \
                    Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.05)
        node.start_one("imaged")
