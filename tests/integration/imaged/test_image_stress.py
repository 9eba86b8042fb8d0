"""Stress (issue 11): several clients pull and remove images that share layers while
containers run from some of them, and imaged is restarted under that load, by SIGTERM and
by kill -9 in turn. After every restart the store invariant is checked: every image listed
just before the restart (and not being removed) is listed after, every blob and layer a
listed image names is on disk, and every layer a running container's snapshot uses.

Kept well under a minute: six small images on the local registry, six restarts.
The figures (pulls, removes, restarts, images checked) are printed."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from crib_common.clients.imaged import ImagedClient
from crib_common.cri.runtime.v1 import (
    ImageSpec,
    ImageStatusRequest,
    ImageStatusResponse,
    ListImagesRequest,
    ListImagesResponse,
    PullImageRequest,
    RemoveImageRequest,
)
from crib_common.errors import CribError
from tests.integration.runtimed.conftest import Cri
from tests.support.images import Entry, Image, ImageConfig, Layer, Pushed, push_image
from tests.support.images import busybox_image as build_busybox_image
from tests.support.registry import Registry
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

SVC = "/runtime.v1.ImageService/"
CLIENTS = 3
# SIGTERM and kill -9 in turn.
RESTARTS = (signal.SIGTERM, signal.SIGKILL) * 3
LOAD_SECONDS = (0.6, 1.5)  # how long the clients run before each restart


@pytest.fixture(scope="module")
def images(registry: Registry) -> list[Pushed]:
    """Six images over the busybox layer: pairs share a middle layer, each has its own top
    (random bytes, so a pull takes long enough for a kill to land in it)."""
    base = build_busybox_image().layers[0]
    middles = [Layer.from_entries([Entry.file(f"mid{m}", os.urandom(150_000))])
               for m in range(3)]
    out = []
    for i in range(6):
        top = Layer.from_entries([Entry.file(f"top{i}", os.urandom(250_000))])
        image = Image([base, middles[i % 3], top], ImageConfig(cmd=["/bin/sleep", "3600"]))
        out.append(push_image(registry, f"crib-test/stress{i}", "v1", image))
    return out


@pytest.fixture
def node() -> Iterator[Stack]:
    with Stack.running() as stack:
        yield stack


@dataclass
class Tally:
    pulls: int = 0
    removes: int = 0
    interrupted: int = 0
    restarts: int = 0
    images_checked: int = 0
    # Image IDs a remove may have taken since the listing before a restart began.
    excused: set[str] | None = None
    removing: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    killing: bool = False


async def _client_loop(sock: Path, images: list[Pushed], tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    async with ImagedClient(sock) as client:
        while True:
            pushed = rng.choice(images)
            remove = rng.random() < 0.4
            if remove:
                tally.removing[pushed.config_digest] = \
                    tally.removing.get(pushed.config_digest, 0) + 1
                if tally.excused is not None:
                    tally.excused.add(pushed.config_digest)
            try:
                if remove:
                    await client.call_cri(SVC + "RemoveImage", bytes(RemoveImageRequest(
                        image=ImageSpec(image=pushed.reference))), timeout=30)
                    tally.removes += 1
                else:
                    await client.call_cri(SVC + "PullImage", bytes(PullImageRequest(
                        image=ImageSpec(image=pushed.reference))), timeout=30)
                    tally.pulls += 1
            except asyncio.CancelledError:
                tally.interrupted += 1  # in flight when imaged went down
                raise
            except (CribError, OSError) as exc:
                if not tally.killing:
                    tally.errors.append(f"{'remove' if remove else 'pull'} "
                                        f"{pushed.reference}: {exc}")
                tally.interrupted += 1
                await asyncio.sleep(0.05)
            finally:
                if remove:
                    tally.removing[pushed.config_digest] -= 1


async def _cri(client: ImagedClient, method: str, request: object, reply: type[object]) -> object:
    raw = await client.call_cri(SVC + method, bytes(request), timeout=10)  # type: ignore[call-overload]
    return reply().parse(raw)  # type: ignore[attr-defined]


async def _listed(client: ImagedClient) -> set[str]:
    reply = await _cri(client, "ListImages", ListImagesRequest(), ListImagesResponse)
    return {img.id for img in reply.images}  # type: ignore[attr-defined]


async def _check_invariant(client: ImagedClient, root: Path, tally: Tally) -> set[str]:
    """Every listed image's blobs and layers are on disk, nothing marked missing; every
    layer of every snapshot is there. Returns the listed IDs."""
    listed = await _listed(client)
    for image_id in listed:
        reply = await _cri(client, "ImageStatus", ImageStatusRequest(
            image=ImageSpec(image=image_id), verbose=True), ImageStatusResponse)
        info = json.loads(reply.info["info"])  # type: ignore[attr-defined]
        assert info["missing"] == {}, (image_id, info["missing"])
        for digest in [image_id, info["manifestDigest"]] + [x["digest"] for x in info["layers"]]:
            assert (root / "blobs/sha256" / digest[7:]).is_file(), (image_id, digest)
        for layer in info["layers"]:
            assert (root / "layers" / layer["diff_id"][7:] / "diff").is_dir(), (image_id, layer)
        tally.images_checked += 1
    for snap in await client.list_snapshots():
        lowers = snap.mounts[0].options[0].removeprefix("lowerdir=").split(":")
        assert all(Path(p).resolve().is_dir() for p in lowers), snap.key
    return listed


async def test_pull_remove_restart_stress(node: Stack, images: list[Pushed],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    root = node.root / "lib/imaged"
    cri = Cri(node)
    tally = Tally()
    try:
        # Containers run from two images (and so hold their layers through every remove).
        running = []
        for pushed in images[:2]:
            cri.img.PullImage(api_pb2.PullImageRequest(
                image=api_pb2.ImageSpec(image=pushed.reference)), timeout=60)
            sid, pod = cri.run_pod()
            cid = cri.create(sid, pod, pushed.reference, "c")
            cri.start(cid)
            running.append(cid)
        for round_no, sig in enumerate(RESTARTS):
            tally.excused, tally.killing = None, False
            sock = node.socket("imaged")
            loops = [asyncio.ensure_future(_client_loop(sock, images, tally, round_no * 10 + c))
                     for c in range(CLIENTS)]
            await asyncio.sleep(random.uniform(*LOAD_SECONDS))
            # From here a remove may take a listed image: those started, or in flight.
            tally.excused = {i for i, n in tally.removing.items() if n > 0}
            async with ImagedClient(sock) as client:
                before = await _listed(client)
            # Synchronous: no client sends anything between the listing and the signal.
            tally.killing = True
            node.kill("imaged", sig)
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            assert tally.errors == [], tally.errors
            node.start_one("imaged")
            tally.restarts += 1
            async with ImagedClient(sock) as client:
                health = await client.health()
                recovery = health["details"]["recovery"]
                assert recovery.get("images_dropped", 0) == 0, recovery
                assert recovery.get("blobs_marked_missing", 0) == 0, recovery
                after = await _check_invariant(client, root, tally)
            lost = before - after - tally.excused
            assert not lost, (sig, lost)
        for cid in running:
            assert cri.status(cid).state == api_pb2.CONTAINER_RUNNING
        cri.remove_all_pods()
    finally:
        cri.close()
    with capsys.disabled():
        print(f"\nimaged stress: {tally.pulls} pulls, {tally.removes} removes, "
              f"{tally.interrupted} in flight at a restart, {tally.restarts} restarts "
              f"(SIGTERM and kill -9), {tally.images_checked} images checked, "
              f"{time.monotonic() - started:.1f} s")
    assert tally.pulls > 0 and tally.removes > 0 and tally.images_checked > 0
