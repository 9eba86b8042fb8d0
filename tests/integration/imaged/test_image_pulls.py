"""imaged's pull table against registries that serve layers slowly: every pull shows in
`GET /v1/pulls` with growing bytes and the pod it is for (a CRI PullImage from the
independent grpcio client with a sandbox config), a layer two pulls need is fetched once
and shows in both, a stalled layer fails its pull on the no-progress timeout while a slow
one that keeps moving completes, the metrics count it all, a long pull logs its
progress, and an unknown pull id is 404."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2, api_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from crib_common.clients.imaged import ImagedClient
from crib_common.errors import DeadlineExceeded, NotFound
from crib_common.models.imaged import PullInfo, PullWatchEvent
from imaged.pulls import table as pull_table
from tests.integration.imaged.conftest import Imaged, start_imaged, stop_imaged
from tests.support.images import Entry, Image, Layer
from tests.support.registry import StaticRegistry
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


def _layer(name: str, size: int) -> Layer:
    """A gzip layer of about `size` incompressible bytes."""
    return Layer.from_entries([Entry.file(name, os.urandom(size))], "gzip")


def _serve(static: StaticRegistry, repo: str, tag: str, layers: list[Layer]) -> Image:
    image = Image(layers)
    static.add_image(repo, tag, image.manifest, image.manifest_media_type,
                     [image.config_blob, *(lay.blob for lay in layers)])
    return image


def _blob(repo: str, layer: Layer) -> str:
    return f"/v2/{repo}/blobs/{layer.digest}"


async def _metrics(client: ImagedClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """imaged's /metrics as {(sample name, sorted labels): value}."""
    _, body = await client.request_bytes("GET", "/metrics", timeout=10)
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _metric(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
            **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def gateway_node() -> Iterator[Stack]:
    with Stack.running(("imaged", "gateway")) as stack:
        yield stack


async def test_cri_pull_shows_growing_bytes_and_the_pod(gateway_node: Stack) -> None:
    """The kubelet's pull through the CRI (grpcio client, sandbox_config) is a row of the
    table while it runs: its bytes grow, it names the pod; the metrics count it."""
    slow = _layer("slow", 600_000)
    with StaticRegistry() as static:
        image = _serve(static, "crib/cri", "v1", [slow])
        static.throttle[_blob("crib/cri", slow)] = 250_000  # ~2.4 s
        ref = f"{static.host}/crib/cri:v1"
        client = ImagedClient(gateway_node.socket("imaged"))
        try:
            before = await _metrics(client)
            with pytest.raises(NotFound):
                await client.get_pull("0123456789ab")
            result: dict[str, object] = {}

            def pull() -> None:
                with grpc.insecure_channel(f"unix://{gateway_node.cri_socket}") as channel:
                    stub = api_pb2_grpc.ImageServiceStub(channel)
                    config = api_pb2.PodSandboxConfig(metadata=api_pb2.PodSandboxMetadata(
                        name="web-0", namespace="shop", uid="uid-web-0", attempt=0))
                    result["reply"] = stub.PullImage(api_pb2.PullImageRequest(
                        image=api_pb2.ImageSpec(image=ref), sandbox_config=config),
                        timeout=60)

            thread = threading.Thread(target=pull)
            thread.start()
            seen: list[PullInfo] = []
            deadline = time.monotonic() + 30
            while thread.is_alive() and time.monotonic() < deadline:
                seen += await client.list_pulls()
                await asyncio.sleep(0.2)
            thread.join(30)
            reply = result["reply"]
            assert reply.image_ref == image.config_digest  # type: ignore[attr-defined]
            mine = [p for p in seen if p.reference == ref]
            assert mine, "the CRI pull never showed in GET /v1/pulls"
            assert {p.id for p in mine} == {mine[0].id}
            info = mine[0]
            assert info.requester.kind == "cri" and info.requester.pod is not None
            assert (info.requester.pod.name, info.requester.pod.namespace,
                    info.requester.pod.uid) == ("web-0", "shop", "uid-web-0")
            downloading = [p.layers[0].done for p in mine
                           if p.layers and p.layers[0].state == "downloading"]
            # Bytes grew while we looked (the throttled layer takes seconds).
            assert len(set(downloading)) >= 3 and downloading == sorted(downloading)
            assert any(p.rate > 0 and p.eta is not None for p in mine)
            assert all(p.size == len(slow.blob) for p in mine if p.layers)
            # Finished: out of the table, still answerable by id with its outcome.
            assert await client.list_pulls() == []
            done = await client.get_pull(info.id)
            assert done.state == "done" and done.image_id == image.config_digest
            assert done.done == done.size == len(slow.blob)
            after = await _metrics(client)
        finally:
            await client.close()
    registry = static.host
    assert _metric(after, "crib_image_pulls_total", requester="cri") == \
        _metric(before, "crib_image_pulls_total", requester="cri") + 1
    assert _metric(after, "crib_image_pull_bytes_total", registry=registry) - \
        _metric(before, "crib_image_pull_bytes_total", registry=registry) == len(slow.blob)
    assert _metric(after, "crib_image_pull_duration_seconds_count", outcome="done") == \
        _metric(before, "crib_image_pull_duration_seconds_count", outcome="done") + 1
    assert _metric(after, "crib_image_pulls_in_flight") == 0


@pytest.fixture
async def quick_stall(imaged_root: Path) -> AsyncIterator[Imaged]:
    """imaged failing a pull after 1.5 s without progress."""
    d = await start_imaged(imaged_root, image_pull_progress_timeout=1.5)
    try:
        yield d
    finally:
        await stop_imaged(d)


async def test_two_pulls_share_a_layer(imaged: Imaged) -> None:
    """A layer two images need is downloaded once; while it comes, both pulls show its
    bytes, the second as shared with the first; both complete."""
    shared, a, b = _layer("shared", 500_000), _layer("a", 1000), _layer("b", 1000)
    with StaticRegistry() as static:
        img_a = _serve(static, "crib/share", "a", [shared, a])
        img_b = _serve(static, "crib/share", "b", [shared, b])
        static.throttle[_blob("crib/share", shared)] = 250_000  # ~2 s
        first = asyncio.ensure_future(imaged.pull(f"{static.host}/crib/share:a"))
        while not await imaged.client.list_pulls():
            await asyncio.sleep(0.05)
        second = asyncio.ensure_future(imaged.pull(f"{static.host}/crib/share:b"))
        both: list[list[PullInfo]] = []
        while not (first.done() and second.done()):
            pulls = await imaged.client.list_pulls()
            if len(pulls) == 2 and all(len(p.layers) == 2 for p in pulls):
                both.append(pulls)
            await asyncio.sleep(0.1)
        assert await first == img_a.config_digest
        assert await second == img_b.config_digest
        assert static.requests.count(_blob("crib/share", shared)) == 1
    assert both, "the two pulls were never in flight together"
    moving = [snap for snap in both if snap[0].layers[0].done > 0
              and snap[0].layers[0].done < len(shared.blob)]
    assert moving, "never saw the shared layer part-way"
    for pa, pb in moving:
        # The same transfer: the same bytes in both rows.
        assert pa.layers[0].digest == pb.layers[0].digest == shared.digest
        assert pa.layers[0].done == pb.layers[0].done
        assert pb.layers[0].state == "shared" and pb.layers[0].shared_with == pa.id
        assert pa.layers[0].state in ("downloading", "verifying", "unpacking")


async def test_stalled_layer_fails_a_moving_one_completes(quick_stall: Imaged) -> None:
    stalled, slow = _layer("stalled", 300_000), _layer("slow", 600_000)
    with StaticRegistry() as static:
        _serve(static, "crib/stall", "v1", [stalled])
        slow_img = _serve(static, "crib/slow", "v1", [slow])
        static.stall[_blob("crib/stall", stalled)] = 50_000
        # ~2.4 s in all, longer than the 1.5 s timeout, but bytes every 50 ms.
        static.throttle[_blob("crib/slow", slow)] = 250_000
        before = await _metrics(quick_stall.client)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as err:
            await quick_stall.pull(f"{static.host}/crib/stall:v1")
        took = time.monotonic() - started
        message = err.value.message
        assert "made no progress" in message and "image_pull_progress_timeout" in message
        assert f"{stalled.digest} at 50000 of {len(stalled.blob)} bytes" in message
        assert 1.5 <= took < 6, took
        [failed] = [p for p in await quick_stall.client.list_pulls(recent=True)
                    if p.reference.endswith("crib/stall:v1")]
        assert failed.state == "failed" and failed.error_kind == "deadline_exceeded"
        assert failed.error == message
        started = time.monotonic()
        assert await quick_stall.pull(f"{static.host}/crib/slow:v1") == slow_img.config_digest
        assert time.monotonic() - started > 1.5  # outlived the timeout by moving
        after = await _metrics(quick_stall.client)
    assert _metric(after, "crib_image_pull_failures_total", reason="no_progress") == \
        _metric(before, "crib_image_pull_failures_total", reason="no_progress") + 1
    assert _metric(after, "crib_image_pull_duration_seconds_count", outcome="failed") == 1
    # The failed pull left nothing of the stalled layer behind (its part file went).
    hexd = stalled.digest.removeprefix("sha256:")
    assert not (quick_stall.root / "blobs/sha256" / hexd).exists()
    assert not list((quick_stall.root / "ingest").glob(hexd + "*"))


async def test_long_pull_logs_progress_and_counts_present_layers(
        imaged: Imaged, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pull_table, "LOG_EVERY", 0.5)
    base, slow = _layer("base", 1000), _layer("slow", 500_000)
    with StaticRegistry() as static:
        _serve(static, "crib/base", "v1", [base])
        img = _serve(static, "crib/log", "v1", [base, slow])
        static.throttle[_blob("crib/log", slow)] = 250_000
        await imaged.pull(f"{static.host}/crib/base:v1")
        before = await _metrics(imaged.client)
        with capture_logs() as logs:
            assert await imaged.pull(f"{static.host}/crib/log:v1") == img.config_digest
        after = await _metrics(imaged.client)
    lines = [e for e in logs if e["event"] == "pull progress"]
    assert lines, [e["event"] for e in logs]
    assert all(e["image"] == f"{static.host}/crib/log:v1" for e in lines)
    assert all(e["total"] == len(base.blob) + len(slow.blob) for e in lines)
    assert any(0 < e["done"] < e["total"] and e["rate"] > 0 for e in lines)
    # The base layer was already unpacked by the first pull.
    assert _metric(after, "crib_image_pull_layers_present_total") == \
        _metric(before, "crib_image_pull_layers_present_total") + 1
    info = (await imaged.client.list_pulls(recent=True))[-1]
    assert [lay.state for lay in info.layers] == ["exists", "done"]


async def test_watch_streams_end_with_the_outcome(imaged: Imaged) -> None:
    """The all-pulls stream (until idle) and a one-pull stream: throttled updates, the
    pull's last event is its outcome; an unknown id is 404 for both routes."""
    slow = _layer("slow", 400_000)
    with StaticRegistry() as static:
        img = _serve(static, "crib/watch", "v1", [slow])
        static.throttle[_blob("crib/watch", slow)] = 250_000
        pull = asyncio.ensure_future(imaged.pull(f"{static.host}/crib/watch:v1"))
        while not await imaged.client.list_pulls():
            await asyncio.sleep(0.02)
        [info] = await imaged.client.list_pulls()
        one = asyncio.ensure_future(_events(imaged.client.watch_pulls(info.id)))
        events = [e async for e in imaged.client.watch_pulls(until_idle=True)]
        assert await pull == img.config_digest
        single = await one
    assert events[-1].type == "idle"
    updates = [e.pull for e in events if e.pull is not None]
    assert updates[-1].state == "done" and updates[-1].image_id == img.config_digest
    # Throttled: a few updates a second, not one per chunk.
    elapsed = updates[-1].elapsed
    assert 3 <= len(updates) <= elapsed * 5 + 3, (len(updates), elapsed)
    assert all(e.type == "pull" and e.pull is not None for e in single)
    assert single[-1].pull is not None and single[-1].pull.state == "done"
    with pytest.raises(NotFound):
        await _events(imaged.client.watch_pulls("feedfeedfeed"))
    _, body = await imaged.client.request_bytes("GET", "/openapi.json", timeout=10)
    for path in ("/v1/pulls", "/v1/pulls/{id}", "/v1/pulls/events", "/v1/pulls/{id}/events"):
        assert path.encode() in body


async def _events(stream: AsyncIterator[PullWatchEvent]) -> list[PullWatchEvent]:
    return [event async for event in stream]
